//! Renders a conversation into the prompt text a model was trained on, from the Jinja chat template
//! stored in its GGUF (the same Hugging Face template the model's authors ship).
//!
//! llama.cpp's built-in template matcher knows the common formats but not tools, so the template is
//! rendered with minijinja (with Python-compatible string methods). When tools are offered to a
//! template that has no notion of tools, they are described in the system prompt in the Hermes /
//! Qwen2.5 `<tools>` / `<tool_call>` convention, which [`super::tool_calls`] parses back.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde_json::{json, Value};

use crate::protocol::messages::ChatMessage;

/// ChatML, used when a GGUF carries no template at all.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template does not parse: {0}")]
    Parse(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// A compiled chat template with the special tokens it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    native_tools: bool,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Templates use it for "Today's date"; an ISO date reads fine whatever format they asked.
            let iso = crate::protocol::messages::iso_datetime(crate::protocol::messages::unix_time_f64());
            iso[..10].to_string()
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| TemplateError::Parse(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            native_tools: source.contains("tools"),
        })
    }

    /// Whether the template renders `tools` itself (Qwen2.5, Llama-3.1, Hermes...).
    pub fn has_native_tools(&self) -> bool {
        self.native_tools
    }

    /// The prompt for `messages` (and `tools`), ending with the assistant's turn opening.
    pub fn render(&self, messages: &[ChatMessage], tools: Option<&[Value]>) -> Result<String, TemplateError> {
        let tools = tools.filter(|t| !t.is_empty());
        let (messages, tools_ctx) = match tools {
            Some(tools) if self.native_tools => {
                (messages.iter().map(native_message).collect::<Vec<_>>(), Some(tools.to_vec()))
            }
            Some(tools) => (with_hermes_tools(messages, tools), None),
            None => (messages.iter().map(flat_message).collect(), None),
        };
        let tmpl = self.env.get_template("chat").map_err(|e| TemplateError::Render(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            tools => tools_ctx,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TemplateError::Render(format!("{e:#}")))
    }
}

/// A message for a template that understands tool calls: `arguments` become objects, as
/// Hugging Face templates expect (`tool_call.arguments | tojson`).
fn native_message(m: &ChatMessage) -> Value {
    let mut v = json!({ "role": m.role, "content": m.text() });
    if let Some(Value::Array(calls)) = &m.tool_calls {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if let Some(args) = c.pointer_mut("/function/arguments") {
                    if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok()) {
                        *args = parsed;
                    }
                }
                // Some templates read `tool_call.name` directly, others `tool_call.function.name`.
                if let Some(f) = c.get("function").cloned() {
                    if let Some(obj) = c.as_object_mut() {
                        for k in ["name", "arguments"] {
                            if let Some(x) = f.get(k) {
                                obj.entry(k).or_insert(x.clone());
                            }
                        }
                    }
                }
                c
            })
            .collect();
        v["tool_calls"] = Value::Array(calls);
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    v
}

/// A message reduced to role + text, for templates that only know those.
fn flat_message(m: &ChatMessage) -> Value {
    let mut text = m.text();
    if let Some(Value::Array(calls)) = &m.tool_calls {
        for c in calls {
            let name = c.pointer("/function/name").cloned().unwrap_or(Value::Null);
            let args = c
                .pointer("/function/arguments")
                .map(|a| a.as_str().and_then(|s| serde_json::from_str(s).ok()).unwrap_or(a.clone()))
                .unwrap_or(json!({}));
            text.push_str(&format!("\n<tool_call>\n{}\n</tool_call>", json!({"name": name, "arguments": args})));
        }
    }
    match m.role.as_str() {
        "tool" => {
            json!({ "role": "user", "content": format!("<tool_response>\n{text}\n</tool_response>") })
        }
        role => json!({ "role": role, "content": text.trim_start() }),
    }
}

/// Describes `tools` in the system prompt, Hermes style, for templates without tool support.
fn with_hermes_tools(messages: &[ChatMessage], tools: &[Value]) -> Vec<Value> {
    let mut block = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        block.push('\n');
        block.push_str(&t.to_string());
    }
    block.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
         within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": \
         <args-json-object>}\n</tool_call>",
    );
    let mut out: Vec<Value> = messages.iter().map(flat_message).collect();
    match out.first_mut() {
        Some(first) if first["role"] == "system" => {
            let sys = first["content"].as_str().unwrap_or_default().to_string();
            first["content"] = json!(format!("{sys}\n\n{block}"));
        }
        _ => out.insert(0, json!({ "role": "system", "content": block })),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN_LIKE: &str = "{%- if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>\n{%- endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn chatml_renders_multi_turn() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
        let p = t
            .render(
                &[
                    ChatMessage::new("system", "S"),
                    ChatMessage::new("user", "U"),
                    ChatMessage::new("assistant", "A"),
                    ChatMessage::new("user", "V"),
                ],
                None,
            )
            .unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tools_go_into_the_system_prompt_when_the_template_lacks_them() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        assert!(!t.has_native_tools());
        let tool = json!({"type":"function","function":{"name":"get_weather","parameters":{}}});
        let p = t.render(&[ChatMessage::new("user", "Weather?")], Some(&[tool])).unwrap();
        assert!(p.starts_with("<|im_start|>system\n# Tools"), "{p}");
        assert!(p.contains("\"get_weather\"") && p.contains("<tool_call>"));
    }

    #[test]
    fn native_tool_templates_get_tools_and_object_arguments() {
        let t = ChatTemplate::new(QWEN_LIKE, "", "").unwrap();
        assert!(t.has_native_tools());
        let tool = json!({"type":"function","function":{"name":"f"}});
        let mut asst = ChatMessage::new("assistant", "");
        asst.tool_calls = Some(json!([{"id":"1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]));
        let p = t.render(&[ChatMessage::new("user", "hi"), asst], Some(&[tool])).unwrap();
        assert!(p.contains("<tools>{\"function\":{\"name\":\"f\"},\"type\":\"function\"}</tools>"), "{p}");
        assert!(p.contains("<tool_call>{\"a\":1}</tool_call>"), "{p}");
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}{% if messages|length > 1 %}{{ raise_exception('too many') }}{% endif %}", "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", " hi ")], None).unwrap(), "HI");
        let err = t.render(&[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")], None).unwrap_err();
        assert!(err.to_string().contains("too many"));
    }

    /// In the style of Llama 3.1's template: bos_token, namespace(), trim, loop.first, tools as JSON.
    const LLAMA3_LIKE: &str = "{{- bos_token }}{%- set ns = namespace(sys='') %}{%- for m in messages %}{%- if m.role == 'system' %}{%- set ns.sys = m.content | trim %}{%- endif %}{%- endfor %}<|start_header_id|>system<|end_header_id|>\n\n{{ ns.sys }}{%- if tools %}\nTools: {% for t in tools %}{{ t | tojson }}{% endfor %}{%- endif %}<|eot_id|>{%- for m in messages if m.role != 'system' %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{%- endfor %}{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}";

    #[test]
    fn llama3_style_templates_render_with_bos_and_namespaces() {
        let t = ChatTemplate::new(LLAMA3_LIKE, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let p = t.render(&[ChatMessage::new("system", " Be brief. "), ChatMessage::new("user", " Hi ")], None).unwrap();
        assert_eq!(
            p,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
        );
    }

    #[test]
    fn tool_results_reach_templates_without_tool_support_as_user_turns() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(json!([{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]));
        let mut result = ChatMessage::new("tool", "42");
        result.tool_call_id = Some("c1".into());
        let p = t.render(&[ChatMessage::new("user", "q"), call, result], None).unwrap();
        assert!(p.contains("<tool_call>\n{\"arguments\":{\"x\":1},\"name\":\"f\"}\n</tool_call>"), "{p}");
        assert!(p.contains("<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>"), "{p}");
    }
}
