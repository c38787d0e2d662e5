//! Stop strings matched at a cost per token that does not depend on the list.
//!
//! The engine checks a sequence's stop strings after every token, on the thread that decodes every
//! other sequence of the worker. Searching the output's tail for each string costs the list's
//! length per token: a challenge with 300,000 one-character stop strings slowed another validator's
//! challenge on the same worker tenfold (issue 32). The front door now caps the list (16 strings of
//! at most 256 bytes), and the strings are compiled once, at admission, into one Aho-Corasick
//! automaton whose state carries over from token to token: each new byte is one transition,
//! whatever the list.

use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, StartKind};

/// One sequence's stop strings and how far the output has been matched against them.
pub struct StopMatcher {
    /// `None`: no stop strings (or none that could be compiled), nothing to match.
    dfa: Option<(DFA, aho_corasick::automaton::StateID)>,
    /// Bytes of the output already fed to the automaton.
    fed: usize,
}

impl StopMatcher {
    /// Compiles `stops` (empty strings ignored). Bounded by the front door's caps, so the build is
    /// microseconds; a list that does not compile matches nothing rather than failing the request.
    pub fn new(stops: &[String]) -> Self {
        let patterns: Vec<&str> = stops.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        let dfa = if patterns.is_empty() {
            None
        } else {
            DFA::builder()
                .start_kind(StartKind::Unanchored)
                .build(&patterns)
                .ok()
                .and_then(|dfa| dfa.start_state(Anchored::No).ok().map(|start| (dfa, start)))
        };
        Self { dfa, fed: 0 }
    }

    /// Feeds the bytes `out` gained since the last call; returns where `out` should be cut when a
    /// stop string now ends in it (the start of the first one to end, the longest of those that end
    /// at the same byte). Each byte is fed once: a token costs its own length.
    pub fn feed(&mut self, out: &[u8]) -> Option<usize> {
        let (dfa, state) = self.dfa.as_mut()?;
        let from = self.fed.min(out.len());
        self.fed = out.len();
        for (i, &byte) in out.iter().enumerate().skip(from) {
            *state = dfa.next_state(Anchored::No, *state, byte);
            if dfa.is_match(*state) {
                // Every stop string ending at this byte is listed here (standard semantics copy
                // the matches of the states it falls back to): the longest starts first.
                let longest = (0..dfa.match_len(*state))
                    .map(|m| dfa.pattern_len(dfa.match_pattern(*state, m)))
                    .max()
                    .unwrap_or(0);
                return Some(i + 1 - longest);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> StopMatcher {
        StopMatcher::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Feeds `pieces` one by one, as tokens arrive; the cut, if any.
    fn run(m: &mut StopMatcher, pieces: &[&str]) -> Option<usize> {
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(p.as_bytes());
            if let Some(cut) = m.feed(&out) {
                return Some(cut);
            }
        }
        None
    }

    #[test]
    fn stop_strings_cut_at_their_start_across_tokens() {
        assert_eq!(run(&mut stops(&["END"]), &["hello ", "E", "ND more"]), Some(6));
        assert_eq!(run(&mut stops(&["END"]), &["hello"]), None);
        assert_eq!(run(&mut stops(&[]), &["hello"]), None);
        assert_eq!(run(&mut stops(&[""]), &["hello"]), None, "an empty stop string matches nothing");
    }

    #[test]
    fn the_first_stop_string_to_end_wins_and_the_longest_of_those() {
        // "bc" ends before "abcd" does.
        assert_eq!(run(&mut stops(&["abcd", "bc"]), &["xab", "cd"]), Some(2));
        // Both end at the same byte: the longer one starts first.
        assert_eq!(run(&mut stops(&["c", "abc"]), &["xabc"]), Some(1));
    }

    #[test]
    fn a_matcher_is_fed_each_byte_once() {
        let mut m = stops(&["zz"]);
        let mut out = b"z".to_vec();
        assert_eq!(m.feed(&out), None);
        assert_eq!(m.feed(&out), None, "feeding the same output again adds nothing");
        out.push(b'z');
        assert_eq!(m.feed(&out), Some(0));
    }
}
