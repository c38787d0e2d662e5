//! Refusal logging that a flood cannot turn into a log flood.
//!
//! Every refusal is counted in `/metrics`; the log gets at most [`PER_MINUTE`] lines per reason per
//! minute, and the first line after a quiet spell says how many were left out.

use std::time::{Duration, Instant};

use dashmap::DashMap;

pub const PER_MINUTE: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct RefusalLog {
    windows: DashMap<&'static str, (Instant, u32, u64)>,
}

impl RefusalLog {
    /// Whether a refusal for `reason` may be logged now, and how many were suppressed before it.
    pub fn admit(&self, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.windows.entry(reason).or_insert((now, 0, 0));
        let (start, logged, suppressed) = &mut *w;
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *logged = 0;
        }
        if *logged < PER_MINUTE {
            *logged += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_reason_logs_a_few_lines_and_other_reasons_still_log() {
        let log = RefusalLog::default();
        let admitted = (0..1000).filter(|_| log.admit("replay").is_some()).count();
        assert_eq!(admitted, PER_MINUTE as usize);
        assert_eq!(log.admit("bad_signature"), Some(0));
    }
}
