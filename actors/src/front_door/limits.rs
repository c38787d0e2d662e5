//! Caps on every size a challenge carries, checked when it is parsed, before any work.
//!
//! A miner is reachable by anyone holding a key, and each size in a challenge becomes work on the
//! engine thread that every other challenge of the worker shares: stop strings are matched after
//! every token, messages and tools are rendered by the chat template and tokenized. A 2 MiB body
//! holds some 390,000 one-character stop strings; unchecked, they cut another validator's
//! tokens/s on the same worker tenfold (issue 32). Each cap has its own error, so that the caller
//! learns which one it passed: 413 for a prompt too large for any context, 422 for the others
//! (mapped in `src/http/error.rs`; never 400, which would make the validator re-handshake).
//!
//! The caps follow common OpenAI-compatible servers (16 stop strings of 256 bytes, 128 tools) and
//! sit far above what validators send (no stop strings, a few messages and tools).

use serde_json::Value;

use crate::protocol::messages::{ChallengeRequest, ChatMessage};

/// Stop strings per challenge.
pub const MAX_STOP_STRINGS: usize = 16;
/// Bytes of one stop string.
pub const MAX_STOP_BYTES: usize = 256;
/// Messages in the conversation.
pub const MAX_MESSAGES: usize = 256;
/// Tool definitions (the forced-call grammar's bound, defined beside it).
pub use crate::inference::tool_choice::MAX_TOOLS;
/// Bytes of one tool definition, as JSON.
pub const MAX_TOOL_BYTES: usize = 32 * 1024;
/// Tool calls in one message of the conversation.
pub const MAX_TOOL_CALLS: usize = 64;
/// Bytes of one tool call's arguments (JSON text) in the conversation.
pub const MAX_TOOL_ARGUMENTS_BYTES: usize = 64 * 1024;
/// Bytes of the prompt's text (every message's content, tool calls and tool definitions): some
/// 250,000 tokens at the 4 bytes a token that English averages, more than any context the miner
/// runs. Each engine refuses, by the same byte count, a prompt its own context cannot hold before
/// rendering and tokenizing it; this cap holds whatever the workers.
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;

/// Which cap a challenge passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("`stop` holds {count} strings; at most {MAX_STOP_STRINGS} are accepted")]
    TooManyStops { count: usize },
    #[error("`stop` string {index} is {bytes} bytes; at most {MAX_STOP_BYTES} are accepted")]
    StopTooLong { index: usize, bytes: usize },
    #[error("the challenge has {count} messages; at most {MAX_MESSAGES} are accepted")]
    TooManyMessages { count: usize },
    #[error("the challenge has {count} tools; at most {MAX_TOOLS} are accepted")]
    TooManyTools { count: usize },
    #[error("tool {index} is {bytes} bytes of JSON; at most {MAX_TOOL_BYTES} are accepted")]
    ToolTooLarge { index: usize, bytes: usize },
    #[error("message {index} has {count} tool calls; at most {MAX_TOOL_CALLS} are accepted")]
    TooManyToolCalls { index: usize, count: usize },
    #[error(
        "a tool call's arguments in message {index} are {bytes} bytes; at most {MAX_TOOL_ARGUMENTS_BYTES} are accepted"
    )]
    ToolArgumentsTooLarge { index: usize, bytes: usize },
    /// The one refusal mapped to 413: the prompt is too large, whatever else is in the challenge.
    #[error("the prompt is {bytes} bytes; at most {MAX_PROMPT_BYTES} are accepted")]
    PromptTooLarge { bytes: usize },
}

/// Checks every cap; the first passed is the error. Costs one walk over the challenge, bounded by
/// the body's size cap.
pub fn check(req: &ChallengeRequest) -> Result<(), LimitError> {
    check_stops(req.stop.as_ref())?;
    let messages = req.messages.as_deref().unwrap_or_default();
    if messages.len() > MAX_MESSAGES {
        return Err(LimitError::TooManyMessages { count: messages.len() });
    }
    let tools = req.tools.as_deref().unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(LimitError::TooManyTools { count: tools.len() });
    }
    // The legacy `prompt` is the conversation only when there are no messages (validators send both).
    let mut bytes = if messages.is_empty() { req.prompt.as_ref().map_or(0, String::len) } else { 0 };
    for (index, tool) in tools.iter().enumerate() {
        let size = json_len(tool);
        if size > MAX_TOOL_BYTES {
            return Err(LimitError::ToolTooLarge { index, bytes: size });
        }
        bytes += size;
    }
    for (index, message) in messages.iter().enumerate() {
        bytes += message_bytes(index, message)?;
    }
    if bytes > MAX_PROMPT_BYTES {
        return Err(LimitError::PromptTooLarge { bytes });
    }
    Ok(())
}

fn check_stops(stop: Option<&Value>) -> Result<(), LimitError> {
    let list = match stop {
        Some(Value::Array(list)) => list.as_slice(),
        Some(one @ Value::String(_)) => std::slice::from_ref(one),
        _ => return Ok(()),
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(LimitError::TooManyStops { count: list.len() });
    }
    match list.iter().enumerate().find_map(|(i, s)| s.as_str().filter(|s| s.len() > MAX_STOP_BYTES).map(|s| (i, s))) {
        Some((index, s)) => Err(LimitError::StopTooLong { index, bytes: s.len() }),
        None => Ok(()),
    }
}

/// The bytes one message adds to the prompt (its text and tool calls), after checking its tool
/// calls' caps.
fn message_bytes(index: usize, message: &ChatMessage) -> Result<usize, LimitError> {
    let text = match &message.content {
        Some(Value::String(s)) => s.len(),
        Some(Value::Null) | None => 0,
        Some(other) => json_len(other),
    };
    let calls = match &message.tool_calls {
        Some(Value::Array(calls)) => calls.as_slice(),
        Some(other) => std::slice::from_ref(other),
        None => &[],
    };
    if calls.len() > MAX_TOOL_CALLS {
        return Err(LimitError::TooManyToolCalls { index, count: calls.len() });
    }
    let mut bytes = text + message.name.as_ref().map_or(0, String::len);
    for call in calls {
        let arguments = match &call["function"]["arguments"] {
            Value::String(s) => s.len(),
            Value::Null => 0,
            other => json_len(other),
        };
        if arguments > MAX_TOOL_ARGUMENTS_BYTES {
            return Err(LimitError::ToolArgumentsTooLarge { index, bytes: arguments });
        }
        bytes += json_len(call);
    }
    Ok(bytes)
}

/// Length of `v` as compact JSON, counted without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn challenge(v: Value) -> ChallengeRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_validators_challenge_passes() {
        let req = challenge(json!({
            "prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "tools": null, "stop": null,
        }));
        assert_eq!(check(&req), Ok(()));
    }

    #[test]
    fn stop_lists_are_capped_in_count_and_length() {
        let ok = challenge(json!({"stop": vec!["x".repeat(MAX_STOP_BYTES); MAX_STOP_STRINGS]}));
        assert_eq!(check(&ok), Ok(()));
        let many = challenge(json!({"stop": vec!["x"; 300_000]}));
        assert_eq!(check(&many), Err(LimitError::TooManyStops { count: 300_000 }));
        let long = challenge(json!({"stop": ["a", "x".repeat(MAX_STOP_BYTES + 1)]}));
        assert_eq!(check(&long), Err(LimitError::StopTooLong { index: 1, bytes: MAX_STOP_BYTES + 1 }));
        let one = challenge(json!({"stop": "x".repeat(MAX_STOP_BYTES + 1)}));
        assert!(matches!(check(&one), Err(LimitError::StopTooLong { index: 0, .. })));
    }

    #[test]
    fn messages_tools_and_tool_arguments_each_have_their_cap() {
        let msg = json!({"role": "user", "content": "hi"});
        let req = challenge(json!({"messages": vec![msg; MAX_MESSAGES + 1]}));
        assert_eq!(check(&req), Err(LimitError::TooManyMessages { count: MAX_MESSAGES + 1 }));
        let tool = json!({"type": "function", "function": {"name": "f"}});
        let req = challenge(json!({"tools": vec![tool; MAX_TOOLS + 1]}));
        assert_eq!(check(&req), Err(LimitError::TooManyTools { count: MAX_TOOLS + 1 }));
        let big = json!({"type": "function", "function": {"name": "f", "description": "x".repeat(MAX_TOOL_BYTES)}});
        assert!(matches!(check(&challenge(json!({"tools": [big]}))), Err(LimitError::ToolTooLarge { index: 0, .. })));
        let call = |args: Value| json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": args}});
        let history = |calls: Vec<Value>| {
            challenge(
                json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null, "tool_calls": calls}]}),
            )
        };
        assert_eq!(check(&history(vec![call(json!("{}"))])), Ok(()));
        let long = history(vec![call(json!("x".repeat(MAX_TOOL_ARGUMENTS_BYTES + 1)))]);
        assert_eq!(
            check(&long),
            Err(LimitError::ToolArgumentsTooLarge { index: 1, bytes: MAX_TOOL_ARGUMENTS_BYTES + 1 })
        );
        let many = history(vec![call(json!("{}")); MAX_TOOL_CALLS + 1]);
        assert_eq!(check(&many), Err(LimitError::TooManyToolCalls { index: 1, count: MAX_TOOL_CALLS + 1 }));
    }

    #[test]
    fn the_prompt_is_capped_in_bytes_whatever_carries_them() {
        let text = "x".repeat(MAX_PROMPT_BYTES / 2 + 1);
        let two =
            challenge(json!({"messages": [{"role": "user", "content": text}, {"role": "user", "content": text}]}));
        assert!(matches!(check(&two), Err(LimitError::PromptTooLarge { .. })));
        let legacy = challenge(json!({"prompt": "x".repeat(MAX_PROMPT_BYTES + 1)}));
        assert_eq!(check(&legacy), Err(LimitError::PromptTooLarge { bytes: MAX_PROMPT_BYTES + 1 }));
    }
}
