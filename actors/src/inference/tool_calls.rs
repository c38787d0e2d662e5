//! Turns `<tool_call>{json}</tool_call>` blocks in generated text into OpenAI `tool_calls`.

use serde_json::Value;

use crate::protocol::messages::{ToolCall, ToolCallFunction};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Splits generated text into the prose and the tool calls it contains. Blocks that do not hold a
/// JSON object with a `name` stay in the text: better to show the validator what the model wrote
/// than to drop it.
pub fn extract_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let mut prose = String::with_capacity(text.len());
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let (body, next) = match after.find(CLOSE) {
            Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
            None => (after, ""),
        };
        match parse_call(body) {
            Some(call) => {
                prose.push_str(&rest[..start]);
                calls.push(call);
            }
            None => prose.push_str(
                &rest[..start
                    + OPEN.len()
                    + body.len()
                    + if next.is_empty() && !after.contains(CLOSE) { 0 } else { CLOSE.len() }],
            ),
        }
        rest = next;
    }
    prose.push_str(rest);
    (prose.trim().to_string(), calls)
}

fn parse_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_string(),
    };
    Some(ToolCall {
        id: format!("call_{}", hex::encode(rand::random::<[u8; 12]>())),
        kind: "function".into(),
        function: ToolCallFunction { name, arguments },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_calls_and_keeps_prose() {
        let (text, calls) = extract_tool_calls(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        );
        assert_eq!(text, "Let me check.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, "{\"city\":\"Paris\"}");
        assert_eq!(calls[0].kind, "function");
        assert!(calls[0].id.starts_with("call_"));
    }

    #[test]
    fn two_calls_and_an_unterminated_one() {
        let (text, calls) = extract_tool_calls(
            "<tool_call>{\"name\":\"a\",\"arguments\":\"{}\"}</tool_call><tool_call>{\"name\":\"b\"}",
        );
        assert_eq!(text, "");
        assert_eq!(calls.iter().map(|c| c.function.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(calls[1].function.arguments, "{}");
    }

    #[test]
    fn malformed_blocks_stay_in_the_text() {
        let (text, calls) = extract_tool_calls("x <tool_call>not json</tool_call> y");
        assert!(calls.is_empty());
        assert_eq!(text, "x <tool_call>not json</tool_call> y");
        let (text, calls) = extract_tool_calls("plain answer");
        assert_eq!((text.as_str(), calls.len()), ("plain answer", 0));
    }
}
