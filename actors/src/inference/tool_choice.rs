//! `tool_choice`, read as an OpenAI server reads it, for the engines that honour it themselves (the
//! embedded llama.cpp engine; OpenAI-compatible backends get the value as sent).
//!
//! `"none"` takes the tools out of the prompt and extracts no call; `"auto"` (or no value) lets the
//! model decide; `"required"` and `{"type": "function", "function": {"name": "X"}}` force a call,
//! which the engine does with a grammar ([`super::grammar`]). A value that cannot be honoured (an
//! unknown function, a call forced with no tools offered, a shape no server accepts) is the
//! request's error: the front door refuses it before any work (422, `src/http/error.rs`), and an
//! engine handed one directly refuses it at admission.

use serde_json::Value;

/// Tool definitions a challenge may carry. It bounds the forced-call grammar, whose size grows with
/// the names it allows; the front door refuses a challenge with more (`front_door/limits.rs`).
pub const MAX_TOOLS: usize = 128;

/// Bytes of a function name that can be forced. OpenAI allows 64 characters of `[A-Za-z0-9_-]`;
/// this is looser (validators may name functions as they like) but keeps the grammar small: at
/// most [`MAX_TOOLS`] names of this size.
pub const MAX_FUNCTION_NAME_BYTES: usize = 256;

/// Longest excerpt of a malformed value quoted back in its error.
const QUOTED: usize = 80;

/// What the engine does with the offered tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Tools are not rendered into the prompt and no call is extracted from the answer.
    None,
    /// The model may answer or call (the default, and what the engine did before `tool_choice`).
    Auto,
    /// The model must call one of these functions (every offered one, in order, without repeats).
    Required(Vec<String>),
    /// The model must call this function.
    Function(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolChoiceError {
    #[error(
        "`tool_choice` must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}; got {0}"
    )]
    Malformed(String),
    #[error("`tool_choice` names the function {name:?}, which is not among the offered tools")]
    UnknownFunction { name: String },
    #[error("`tool_choice` forces a tool call ({choice}) but no tools are offered")]
    NoTools { choice: String },
    #[error("tool {index} has no function name (`function.name`, a string), so it cannot be forced")]
    UnnamedTool { index: usize },
    #[error("a forced function name is {bytes} bytes; at most {MAX_FUNCTION_NAME_BYTES} are accepted")]
    NameTooLong { bytes: usize },
    #[error("{count} tools are offered; at most {MAX_TOOLS} can be forced")]
    TooManyTools { count: usize },
}

impl ToolChoice {
    /// Reads `choice` against the offered `tools`. Never panics, whatever the JSON.
    pub fn parse(choice: Option<&Value>, tools: Option<&[Value]>) -> Result<Self, ToolChoiceError> {
        let tools = tools.unwrap_or_default();
        match choice {
            None | Some(Value::Null) => Ok(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "none" => Ok(ToolChoice::None),
                "auto" => Ok(ToolChoice::Auto),
                "required" => {
                    if tools.is_empty() {
                        return Err(ToolChoiceError::NoTools { choice: "\"required\"".into() });
                    }
                    let names = offered_names(tools)?;
                    Ok(ToolChoice::Required(names))
                }
                _ => Err(malformed(choice)),
            },
            Some(Value::Object(obj)) => {
                // {"type": "function", "function": {"name": "X"}}; the flat {"type": "function",
                // "name": "X"} of the Responses API is read too.
                if obj.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(malformed(choice));
                }
                let name = obj
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| obj.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed(choice))?;
                if name.len() > MAX_FUNCTION_NAME_BYTES {
                    return Err(ToolChoiceError::NameTooLong { bytes: name.len() });
                }
                if tools.is_empty() {
                    return Err(ToolChoiceError::NoTools { choice: format!("the function {name:?}") });
                }
                if !tools.iter().any(|t| tool_name(t) == Some(name)) {
                    return Err(ToolChoiceError::UnknownFunction { name: name.to_string() });
                }
                Ok(ToolChoice::Function(name.to_string()))
            }
            Some(_) => Err(malformed(choice)),
        }
    }

    /// Whether the tools go into the prompt.
    pub fn offers_tools(&self) -> bool {
        !matches!(self, ToolChoice::None)
    }

    /// Whether `<tool_call>` blocks in the answer become tool calls.
    pub fn extracts_calls(&self) -> bool {
        !matches!(self, ToolChoice::None)
    }

    /// The functions one of which the answer must call, when a call is forced.
    pub fn forced(&self) -> Option<Vec<&str>> {
        match self {
            ToolChoice::Required(names) => Some(names.iter().map(String::as_str).collect()),
            ToolChoice::Function(name) => Some(vec![name.as_str()]),
            ToolChoice::None | ToolChoice::Auto => None,
        }
    }
}

/// A tool's function name: `function.name` (OpenAI's shape) or a flat `name`.
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function").and_then(|f| f.get("name")).or_else(|| tool.get("name")).and_then(Value::as_str)
}

/// Every offered function's name, once each, in order; each must be a usable name.
fn offered_names(tools: &[Value]) -> Result<Vec<String>, ToolChoiceError> {
    if tools.len() > MAX_TOOLS {
        return Err(ToolChoiceError::TooManyTools { count: tools.len() });
    }
    let mut names: Vec<String> = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        let name = tool_name(tool).ok_or(ToolChoiceError::UnnamedTool { index })?;
        if name.len() > MAX_FUNCTION_NAME_BYTES {
            return Err(ToolChoiceError::NameTooLong { bytes: name.len() });
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The error for a value of no accepted shape, quoting its start (a body may hold a large one).
fn malformed(choice: Option<&Value>) -> ToolChoiceError {
    let text = choice.map_or_else(String::new, Value::to_string);
    let quoted: String = text.chars().take(QUOTED).collect();
    ToolChoiceError::Malformed(if quoted.len() < text.len() { format!("{quoted}...") } else { quoted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}),
            json!({"type": "function", "function": {"name": "now"}}),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ]
    }

    fn parse(choice: Value) -> Result<ToolChoice, ToolChoiceError> {
        ToolChoice::parse(Some(&choice), Some(&tools()))
    }

    #[test]
    fn the_three_words_and_no_value_read_as_an_openai_server_reads_them() {
        assert_eq!(ToolChoice::parse(None, Some(&tools())), Ok(ToolChoice::Auto));
        assert_eq!(parse(Value::Null), Ok(ToolChoice::Auto));
        assert_eq!(parse(json!("auto")), Ok(ToolChoice::Auto));
        assert_eq!(parse(json!("none")), Ok(ToolChoice::None));
        assert_eq!(parse(json!("required")), Ok(ToolChoice::Required(vec!["get_weather".into(), "now".into()])));
        // Without tools, "auto" and "none" are fine (validators send "auto" with no tools).
        assert_eq!(ToolChoice::parse(Some(&json!("auto")), None), Ok(ToolChoice::Auto));
        assert_eq!(ToolChoice::parse(Some(&json!("none")), Some(&[])), Ok(ToolChoice::None));
        assert!(!ToolChoice::None.offers_tools() && !ToolChoice::None.extracts_calls());
        assert!(ToolChoice::Auto.offers_tools() && ToolChoice::Auto.forced().is_none());
    }

    #[test]
    fn a_named_function_must_be_offered() {
        let named = parse(json!({"type": "function", "function": {"name": "now"}})).unwrap();
        assert_eq!(named, ToolChoice::Function("now".into()));
        assert_eq!(named.forced(), Some(vec!["now"]));
        assert_eq!(parse(json!({"type": "function", "name": "now"})), Ok(ToolChoice::Function("now".into())));
        assert_eq!(
            parse(json!({"type": "function", "function": {"name": "launch"}})),
            Err(ToolChoiceError::UnknownFunction { name: "launch".into() })
        );
        let err = ToolChoice::parse(Some(&json!({"type": "function", "function": {"name": "now"}})), None).unwrap_err();
        assert!(matches!(err, ToolChoiceError::NoTools { .. }), "{err}");
        assert!(matches!(ToolChoice::parse(Some(&json!("required")), Some(&[])), Err(ToolChoiceError::NoTools { .. })));
    }

    #[test]
    fn malformed_values_are_errors_never_panics() {
        let long = "x".repeat(10_000);
        for bad in [
            json!("any"),
            json!("REQUIRED"),
            json!(""),
            json!(7),
            json!(true),
            json!([]),
            json!(["required"]),
            json!({}),
            json!({"type": "function"}),
            json!({"type": "function", "function": null}),
            json!({"type": "function", "function": {"name": 3}}),
            json!({"type": "function", "function": "now"}),
            json!({"type": "tool", "function": {"name": "now"}}),
            json!({"function": {"name": "now"}}),
            json!(long),
        ] {
            match parse(bad.clone()) {
                Err(ToolChoiceError::Malformed(quoted)) => assert!(quoted.len() <= QUOTED + 3, "{quoted}"),
                other => panic!("{bad} gave {other:?}"),
            }
        }
        let err = parse(json!({"type": "function", "function": {"name": long}})).unwrap_err();
        assert_eq!(err, ToolChoiceError::NameTooLong { bytes: 10_000 });
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn required_needs_a_usable_name_on_every_tool_and_at_most_the_tool_cap() {
        let mut with_nameless = tools();
        with_nameless.push(json!({"type": "function", "function": {"description": "no name"}}));
        assert_eq!(
            ToolChoice::parse(Some(&json!("required")), Some(&with_nameless)),
            Err(ToolChoiceError::UnnamedTool { index: 3 })
        );
        let many: Vec<Value> =
            (0..=MAX_TOOLS).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect();
        assert_eq!(
            ToolChoice::parse(Some(&json!("required")), Some(&many)),
            Err(ToolChoiceError::TooManyTools { count: MAX_TOOLS + 1 })
        );
        // The flat shape is read too.
        let flat = [json!({"name": "a"}), json!({"name": "b"})];
        assert_eq!(
            ToolChoice::parse(Some(&json!("required")), Some(&flat)),
            Ok(ToolChoice::Required(vec!["a".into(), "b".into()]))
        );
    }
}
