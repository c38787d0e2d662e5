//! Forcing a tool call: a GBNF grammar of the Hermes `<tool_call>` block, and the draw that keeps
//! the embedded engine's sampling inside it.
//!
//! When `tool_choice` forces a call, the answer must be exactly
//! `<tool_call>\n{"name": "<an allowed name>", "arguments": <a JSON object>}\n</tool_call>` (what
//! [`super::tool_calls`] parses back), then the end of generation. llama.cpp's grammar sampler
//! masks the tokens that cannot continue that text. Masking costs a pass of the grammar over the
//! whole vocabulary, so the draw first samples as usual and checks that one token against the
//! grammar, masking only when it is refused: what llama.cpp's own `common_sampler` does. The
//! validator's sampling (nucleus, temperature) still draws the token, from the masked logits.
//!
//! The grammar's size is bounded by its names: at most [`crate::inference::tool_choice::MAX_TOOLS`]
//! of [`super::tool_choice::MAX_FUNCTION_NAME_BYTES`] each (checked by
//! [`super::tool_choice::ToolChoice::parse`]). Numbers and whitespace are bounded so that a model
//! cannot spin in them; strings and nesting are not (`max_tokens` and the deadline bound the
//! answer).

use std::fmt::Write;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use super::request::BackendError;
use super::sampler::TokenSampler;

/// The rules after `root` and `name`: a JSON object for the arguments, in the spacing the Hermes
/// prompt shows (`{"city": "Paris", "days": 2}`).
const JSON_RULES: &str = r#"object ::= "{" ws ( member ( "," ws member )* )? "}"
member ::= string ":" ws value
value ::= object | array | string | number | "true" | "false" | "null"
array ::= "[" ws ( value ( "," ws value )* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
ws ::= " "?
"#;

/// The GBNF grammar of one Hermes tool call to one of `names` (repeats ignored; at least one name).
pub fn tool_call_grammar(names: &[&str]) -> String {
    let mut out = String::from(
        "root ::= \"<tool_call>\\n{\\\"name\\\": \" name \", \\\"arguments\\\": \" object \"}\\n</tool_call>\"\nname ::= ",
    );
    let mut seen: Vec<&str> = Vec::with_capacity(names.len());
    for &name in names {
        if seen.contains(&name) {
            continue;
        }
        if !seen.is_empty() {
            out.push_str(" | ");
        }
        seen.push(name);
        // The name as the model writes it: a JSON string, then as a GBNF literal.
        let json = serde_json::to_string(name).unwrap_or_else(|_| String::from("\"\""));
        out.push_str(&gbnf_literal(&json));
    }
    out.push('\n');
    out.push_str(JSON_RULES);
    out
}

/// `text` as a GBNF string literal: quotes and backslashes escaped, control characters and
/// everything outside ASCII as `\x`, `\u` or `\U` escapes (so no byte of the grammar is a NUL or a
/// partial character).
pub fn gbnf_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c if (c as u32) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// One sequence's grammar state and the scratch its draws reuse. Lives in the sequence's slot.
pub struct ToolGrammar {
    sampler: LlamaSampler,
    /// The whole vocabulary as candidates, for a masking pass.
    candidates: LlamaTokenDataArray,
    /// The logits with the refused tokens at minus infinity.
    masked: Vec<f32>,
}

impl ToolGrammar {
    /// A grammar forcing one call to one of `names`, over `model`'s vocabulary.
    pub fn new(model: &LlamaModel, names: &[&str]) -> Result<Self, BackendError> {
        if names.is_empty() {
            return Err(BackendError::ToolChoice("no function to force a call to".into()));
        }
        let grammar = tool_call_grammar(names);
        let sampler = LlamaSampler::grammar(model, &grammar, "root")
            .map_err(|e| BackendError::ToolChoice(format!("the tool-call grammar does not compile: {e}")))?;
        Ok(Self { sampler, candidates: LlamaTokenDataArray::new(Vec::new(), false), masked: Vec::new() })
    }

    /// Draws the next token from `logits` with `sampler`, among the tokens the grammar allows
    /// next; `None` when it allows none (the vocabulary cannot continue it). A token returned is
    /// safe to [`Self::accept`] (an end-of-generation token only once the call is complete).
    pub fn draw(&mut self, sampler: &mut TokenSampler, logits: &[f32]) -> Option<LlamaToken> {
        let first = sampler.sample(logits);
        if self.allows(first) {
            return Some(LlamaToken::new(first as i32));
        }
        self.candidates.data.clear();
        self.candidates.data.extend(
            logits.iter().enumerate().map(|(id, &logit)| LlamaTokenData::new(LlamaToken::new(id as i32), logit, 0.0)),
        );
        self.candidates.selected = None;
        self.candidates.sorted = false;
        self.sampler.apply(&mut self.candidates);
        self.masked.clear();
        self.masked.resize(logits.len(), f32::NEG_INFINITY);
        for d in &self.candidates.data {
            if let Some(slot) = usize::try_from(d.id().0).ok().and_then(|i| self.masked.get_mut(i)) {
                *slot = d.logit();
            }
        }
        let token = sampler.sample(&self.masked);
        // The sampler falls back to the argmax when every logit is masked: never hand that on.
        self.masked.get(token as usize).is_some_and(|l| l.is_finite()).then(|| LlamaToken::new(token as i32))
    }

    /// Advances the grammar past `token`, which [`Self::draw`] returned and which does not end
    /// generation. llama.cpp aborts the process on a token its grammar refuses, so only drawn
    /// tokens may come here.
    pub fn accept(&mut self, token: LlamaToken) {
        self.sampler.accept(token);
    }

    /// Whether the grammar allows `token` next (one candidate through the grammar).
    fn allows(&mut self, token: u32) -> bool {
        let Ok(id) = i32::try_from(token) else { return false };
        self.candidates.data.clear();
        self.candidates.data.push(LlamaTokenData::new(LlamaToken::new(id), 0.0, 0.0));
        self.candidates.selected = None;
        self.candidates.sorted = false;
        self.sampler.apply(&mut self.candidates);
        self.candidates.data.first().is_some_and(|d| d.logit().is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a GBNF string literal back (the escapes llama.cpp's parser knows), to check that
    /// [`gbnf_literal`] says exactly its text.
    fn unescape(literal: &str) -> String {
        let inner = literal.strip_prefix('"').and_then(|s| s.strip_suffix('"')).expect("quoted");
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                assert!(c != '"', "an unescaped quote in {literal}");
                out.push(c);
                continue;
            }
            let hex = |n: usize, chars: &mut std::str::Chars| {
                let digits: String = chars.take(n).collect();
                char::from_u32(u32::from_str_radix(&digits, 16).unwrap()).unwrap()
            };
            match chars.next().unwrap() {
                'x' => out.push(hex(2, &mut chars)),
                'u' => out.push(hex(4, &mut chars)),
                'U' => out.push(hex(8, &mut chars)),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                c @ ('\\' | '"' | '[' | ']' | '-') => out.push(c),
                other => panic!("unknown escape \\{other}"),
            }
        }
        out
    }

    #[test]
    fn literals_say_exactly_their_text_in_printable_ascii() {
        for text in ["get_weather", "a\"b", "back\\slash", "line\nbreak\ttab\r", "nul\u{0}del\u{7f}", "café ☕ 𝄞", ""]
        {
            let lit = gbnf_literal(text);
            assert!(lit.chars().all(|c| (' '..='~').contains(&c)), "{lit}");
            assert_eq!(unescape(&lit), text, "{lit}");
        }
        assert_eq!(gbnf_literal("é𝄞"), "\"\\u00E9\\U0001D11E\"");
    }

    #[test]
    fn the_grammar_lists_each_name_once_as_the_json_string_the_model_writes() {
        let g = tool_call_grammar(&["get_weather", "say \"hi\"", "get_weather"]);
        let name_rule = g.lines().find(|l| l.starts_with("name ::= ")).unwrap();
        let alternatives: Vec<String> =
            name_rule.trim_start_matches("name ::= ").split(" | ").map(unescape).collect::<Vec<_>>();
        assert_eq!(alternatives, ["\"get_weather\"", r#""say \"hi\"""#]);
        // Each alternative is the name's JSON encoding: the parser reads the call back to it.
        assert_eq!(serde_json::from_str::<String>(&alternatives[1]).unwrap(), "say \"hi\"");
        let root = g.lines().next().unwrap();
        assert_eq!(root, r#"root ::= "<tool_call>\n{\"name\": " name ", \"arguments\": " object "}\n</tool_call>""#);
        for rule in ["object", "member", "value", "array", "string", "number", "ws"] {
            assert!(g.lines().any(|l| l.starts_with(&format!("{rule} ::= "))), "{rule} missing:\n{g}");
        }
    }

    #[test]
    fn the_grammar_grows_with_the_names_only() {
        let names: Vec<String> = (0..128).map(|i| format!("{}{i}", "n".repeat(250))).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let g = tool_call_grammar(&refs);
        assert!(g.len() < 128 * 260 + 1024, "{} bytes", g.len());
        // Names needing every escape stay on one line each alternative, so the rule stays one line.
        let g = tool_call_grammar(&["a\nb", "c\u{0}d"]);
        assert_eq!(g.lines().filter(|l| l.starts_with("name ::= ")).count(), 1);
        assert!(!g.contains('\0'));
    }
}
