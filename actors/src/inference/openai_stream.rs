//! What the OpenAI worker gathers from one streamed chat completion, with every size the backend
//! decides bounded.
//!
//! The backend is a server the miner does not control. Trusted as it was, one `tool_calls` delta
//! with `index` 4,000,000,000 made the worker allocate four billion partial calls, and endless
//! content deltas grew the answer until the node passed 2 GiB and the kernel ended it, losing the
//! challenges in flight (issue 32). Here a tool-call index past [`MAX_TOOL_CALLS`] and an answer
//! longer than its `max_tokens` could be ([`answer_cap`]) are the backend misbehaving: the
//! challenge fails with a 502 and the node carries on.

use std::time::Instant;

use serde_json::Value;

use super::request::{BackendError, JobControl};

/// Tool calls one answer may hold (an index at or past it is refused). Validators offer a few
/// tools; OpenAI allows 128 tools, and no model calls more than a handful at once.
pub const MAX_TOOL_CALLS: usize = 64;
/// Bytes one token may add to the answer. Tokens average about 4 bytes of English; the longest in
/// common vocabularies (runs of spaces or punctuation) stay under this.
pub const BYTES_PER_TOKEN: usize = 32;
/// Room for what is not tokens: tool-call ids and names, JSON punctuation of the arguments.
pub const ANSWER_SLACK: usize = 4096;

/// Bytes of text and tool calls an answer of `max_tokens` tokens can hold at most.
pub fn answer_cap(max_tokens: u32) -> usize {
    (max_tokens as usize).saturating_mul(BYTES_PER_TOKEN).saturating_add(ANSWER_SLACK)
}

/// One tool call, as its deltas arrive.
#[derive(Default, Debug)]
pub struct PartialCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Whether the stream goes on after a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    More,
    /// `data: [DONE]`.
    Done,
}

/// The answer so far.
pub struct StreamedAnswer {
    pub text: String,
    pub calls: Vec<PartialCall>,
    pub finish: Option<String>,
    /// (prompt, completion) tokens, when the server reports them.
    pub usage: Option<(u32, u32)>,
    /// Non-empty content deltas: the completion tokens when the server reports no usage.
    pub deltas: u32,
    pub first_token_at: Option<Instant>,
    /// Bytes held in `text` and `calls`, and their cap.
    size: usize,
    cap: usize,
}

impl StreamedAnswer {
    pub fn new(max_tokens: u32) -> Self {
        Self {
            text: String::new(),
            calls: Vec::new(),
            finish: None,
            usage: None,
            deltas: 0,
            first_token_at: None,
            size: 0,
            cap: answer_cap(max_tokens),
        }
    }

    /// Folds one SSE line into the answer. `url` names the server in errors.
    pub fn line(&mut self, line: &[u8], control: &JobControl, url: &str) -> Result<Flow, BackendError> {
        let line = String::from_utf8_lossy(line);
        let Some(data) = line.trim().strip_prefix("data:") else { return Ok(Flow::More) };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Flow::Done);
        }
        let Ok(event) = serde_json::from_str::<Value>(data) else { return Ok(Flow::More) };
        if let Some(err) = event.get("error") {
            let message: String = err.to_string().chars().take(300).collect();
            return Err(BackendError::Inference(format!("{url}: {message}")));
        }
        if let Some(u) = event.get("usage").filter(|u| u.is_object()) {
            let count = |k: &str| u[k].as_u64().map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
            self.usage = Some((count("prompt_tokens"), count("completion_tokens")));
        }
        let Some(choice) = event["choices"].get(0) else { return Ok(Flow::More) };
        let delta = &choice["delta"];
        if let Some(content) = delta["content"].as_str().filter(|c| !c.is_empty()) {
            self.first_token(control);
            self.grow(content.len(), url)?;
            self.text.push_str(content);
            self.deltas = self.deltas.saturating_add(1);
        }
        if let Some(tool_deltas) = delta["tool_calls"].as_array() {
            self.first_token(control);
            for (n, d) in tool_deltas.iter().enumerate() {
                let index = d["index"].as_u64().unwrap_or(n as u64);
                if index >= MAX_TOOL_CALLS as u64 {
                    return Err(BackendError::Misbehaved(format!(
                        "{url}: a tool call numbered {index}; at most {MAX_TOOL_CALLS} are accepted"
                    )));
                }
                let index = index as usize;
                if self.calls.len() <= index {
                    self.calls.resize_with(index + 1, PartialCall::default);
                }
                // Counted before it is merged, so that nothing past the cap is ever held.
                self.grow(delta_size(d), url)?;
                merge_tool_delta(&mut self.calls[index], d);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish = Some(reason.chars().take(64).collect());
        }
        Ok(Flow::More)
    }

    fn first_token(&mut self, control: &JobControl) {
        self.first_token_at.get_or_insert_with(Instant::now);
        control.first_token();
    }

    /// Counts `bytes` more held; past the cap the backend sent more than `max_tokens` allows.
    fn grow(&mut self, bytes: usize, url: &str) -> Result<(), BackendError> {
        self.size += bytes;
        if self.size > self.cap {
            return Err(BackendError::Misbehaved(format!(
                "{url}: the answer passed {} bytes, more than its max_tokens allows",
                self.cap
            )));
        }
        Ok(())
    }
}

/// Bytes a tool-call delta can add to its call, at most (an id or Ollama's whole arguments
/// replace what was there: counting them as added errs on the side of the cap).
fn delta_size(d: &Value) -> usize {
    let f = &d["function"];
    let arguments = match &f["arguments"] {
        Value::String(s) => s.len(),
        Value::Object(o) => serde_json::to_string(o).map_or(0, |s| s.len()),
        _ => 0,
    };
    d["id"].as_str().map_or(0, str::len) + f["name"].as_str().map_or(0, str::len) + arguments
}

/// Folds one streamed tool-call delta into the call it belongs to.
pub fn merge_tool_delta(call: &mut PartialCall, d: &Value) {
    if let Some(id) = d["id"].as_str() {
        call.id = id.to_string();
    }
    let f = &d["function"];
    // OpenAI and vLLM send the name once, in the call's first delta; llama-cpp-python repeats it
    // whole in every delta. A name is never streamed in pieces, so the first one stands.
    if let Some(name) = f["name"].as_str().filter(|n| !n.is_empty()) {
        if call.name.is_empty() {
            call.name = name.to_string();
        }
    }
    match &f["arguments"] {
        Value::String(s) => call.arguments.push_str(s),
        // Ollama sends the arguments as a JSON object, whole.
        Value::Object(o) => call.arguments = Value::Object(o.clone()).to_string(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: Value) -> Vec<u8> {
        format!("data: {v}").into_bytes()
    }

    #[test]
    fn tool_deltas_merge_across_chunks_and_dialects() {
        let mut call = PartialCall::default();
        merge_tool_delta(
            &mut call,
            &json!({"index":0,"id":"c1","function":{"name":"get_weather","arguments":"{\"ci"}}),
        );
        merge_tool_delta(&mut call, &json!({"index":0,"function":{"arguments":"ty\":\"Paris\"}"}}));
        assert_eq!(
            (call.id.as_str(), call.name.as_str(), call.arguments.as_str()),
            ("c1", "get_weather", "{\"city\":\"Paris\"}")
        );
        // llama-cpp-python repeats the name in every delta.
        let mut repeated = PartialCall::default();
        for part in ["{\"city\": ", "\"Paris\"}"] {
            merge_tool_delta(&mut repeated, &json!({"index":0,"function":{"name":"get_weather","arguments":part}}));
        }
        assert_eq!((repeated.name.as_str(), repeated.arguments.as_str()), ("get_weather", "{\"city\": \"Paris\"}"));
        let mut ollama = PartialCall::default();
        merge_tool_delta(&mut ollama, &json!({"function":{"name":"f","arguments":{"x":1}}}));
        assert_eq!(ollama.arguments, "{\"x\":1}");
    }

    #[test]
    fn a_tool_call_index_past_the_limit_is_the_backend_misbehaving() {
        let mut answer = StreamedAnswer::new(16);
        let control = JobControl::default();
        let ok = event(json!({"choices":[{"delta":{"tool_calls":[{"index":3,"function":{"name":"f"}}]}}]}));
        assert_eq!(answer.line(&ok, &control, "u"), Ok(Flow::More));
        assert_eq!(answer.calls.len(), 4);
        let hostile =
            event(json!({"choices":[{"delta":{"tool_calls":[{"index":4_000_000_000u64,"function":{"name":"f"}}]}}]}));
        assert!(
            matches!(answer.line(&hostile, &control, "u"), Err(BackendError::Misbehaved(m)) if m.contains("4000000000"))
        );
        assert_eq!(answer.calls.len(), 4, "nothing allocated for it");
    }

    #[test]
    fn text_and_arguments_stop_at_what_max_tokens_allows() {
        let control = JobControl::default();
        let mut answer = StreamedAnswer::new(4);
        let chunk = event(json!({"choices":[{"delta":{"content":"x".repeat(1024)}}]}));
        let mut taken = 0;
        let result = loop {
            match answer.line(&chunk, &control, "u") {
                Ok(_) => taken += 1,
                Err(e) => break e,
            }
            assert!(taken < 1000, "the cap never came");
        };
        assert!(matches!(result, BackendError::Misbehaved(m) if m.contains("max_tokens")));
        assert!(answer.text.len() <= answer_cap(4));
        let mut args = StreamedAnswer::new(4);
        let delta = event(
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"y".repeat(1024)}}]}}]}),
        );
        let result = (0..1000).find_map(|_| args.line(&delta, &control, "u").err());
        assert!(matches!(result, Some(BackendError::Misbehaved(_))));
        assert!(args.calls[0].arguments.len() <= answer_cap(4));
    }

    #[test]
    fn an_honest_stream_is_gathered_whole() {
        let control = JobControl::default();
        let mut answer = StreamedAnswer::new(16);
        for line in [
            event(json!({"choices":[{"delta":{"content":"Hel"}}]})),
            Vec::new(),
            event(json!({"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]})),
            event(json!({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}})),
        ] {
            assert_eq!(answer.line(&line, &control, "u"), Ok(Flow::More));
        }
        assert_eq!(answer.line(b"data: [DONE]", &control, "u"), Ok(Flow::Done));
        assert_eq!(
            (answer.text.as_str(), answer.finish.as_deref(), answer.usage, answer.deltas),
            ("Hello", Some("stop"), Some((5, 2)), 2)
        );
        assert!(control.has_first_token());
    }
}
