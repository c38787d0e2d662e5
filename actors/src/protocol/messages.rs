//! The JSON that crosses the wire: key exchange, challenge and reply, as PROTOCOL.md describes them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::pyfloat::python_float_repr;

/// Body of `POST /fiber/key-exchange`.
///
/// `timestamp` is kept as raw JSON text: the validator signed the text its `json.dumps` wrote, and
/// re-formatting a parsed f64 is only a fallback.
#[derive(Debug, Deserialize)]
pub struct KeyExchangeRequest {
    pub encrypted_symmetric_key: String,
    pub symmetric_key_uuid: String,
    pub timestamp: Box<RawValue>,
    pub nonce: String,
    pub signature: String,
    pub validator_hotkey_ss58: String,
}

impl KeyExchangeRequest {
    /// The timestamp as seconds, if it is a JSON number (or a numeric string, as pydantic coerces).
    pub fn timestamp_secs(&self) -> Option<f64> {
        let raw = self.timestamp.get().trim();
        let text = raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(raw);
        text.parse::<f64>().ok().filter(|v| v.is_finite())
    }

    /// The messages a validator may have signed, most likely first: Python's float repr of the
    /// timestamp (what the Python miner checks), then the raw JSON text when it differs.
    pub fn candidate_signed_messages(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(2);
        if let Some(ts) = self.timestamp_secs() {
            out.push(format!("{}.{}.{}", python_float_repr(ts), self.nonce, self.validator_hotkey_ss58));
        }
        let raw = format!("{}.{}.{}", self.timestamp.get().trim(), self.nonce, self.validator_hotkey_ss58);
        if !out.contains(&raw) {
            out.push(raw);
        }
        out
    }
}

/// One OpenAI chat message, kept loose: validators may send content parts and tool fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: Some(Value::String(content.into())),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    /// The text of the message: a plain string, or the `text` parts of a content array joined.
    pub fn text(&self) -> String {
        match &self.content {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
            }
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }
}

/// The decrypted challenge. Every key is optional on the wire; unknown keys are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChallengeRequest {
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

impl ChallengeRequest {
    /// The conversation to answer: `messages` when given, else the legacy `prompt` as one user turn.
    /// `None` when neither is usable (the caller answers 422).
    pub fn conversation(&self) -> Option<Vec<ChatMessage>> {
        match (&self.messages, &self.prompt) {
            (Some(m), _) if !m.is_empty() => Some(m.clone()),
            (_, Some(p)) => Some(vec![ChatMessage::new("user", p)]),
            _ => None,
        }
    }

    /// Stop strings, from a string or an array of strings.
    pub fn stop_strings(&self) -> Vec<String> {
        match &self.stop {
            Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
            Some(Value::Array(a)) => {
                a.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// An OpenAI tool call in the reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: ToolCallFunction,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCallFunction {
    pub name: String,
    /// JSON text, as OpenAI returns it.
    pub arguments: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// The reply, encrypted back to the validator. `response_text` is always a string.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChallengeReply {
    pub response_text: String,
    pub response_time_ms: u64,
    pub tool_calls: Option<Vec<ToolCall>>,
    pub finish_reason: String,
    pub usage: Usage,
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// Echoes the request's `metadata` with our two pipeline stages appended to `timing_data.stages`,
/// keeping every field we do not know. Returns `None` when the request carried no `timing_data`.
pub fn echo_timing(
    metadata: Option<&Map<String, Value>>,
    inference_start: f64,
    inference_end: f64,
    response_start: f64,
) -> Option<Map<String, Value>> {
    let mut metadata = metadata?.clone();
    let timing = metadata.get_mut("timing_data")?.as_object_mut()?;
    let stages = timing.entry("stages").or_insert_with(|| Value::Array(Vec::new()));
    if !stages.is_array() {
        *stages = Value::Array(Vec::new());
    }
    let stages = stages.as_array_mut()?;
    let elapsed_ms = ((inference_end - inference_start) * 1000.0 * 1000.0).round() / 1000.0;
    stages.push(serde_json::json!({
        "stage_name": "miner_inference",
        "start_timestamp": inference_start,
        "start_datetime": iso_datetime(inference_start),
        "end_timestamp": inference_end,
        "end_datetime": iso_datetime(inference_end),
        "elapsed_ms": elapsed_ms,
    }));
    stages.push(serde_json::json!({
        "stage_name": "miner_response",
        "start_timestamp": response_start,
        "start_datetime": iso_datetime(response_start),
        "end_timestamp": null,
        "end_datetime": null,
        "elapsed_ms": null,
    }));
    Some(metadata)
}

/// Naive ISO-8601 UTC with microseconds, as Python's `datetime.utcnow().isoformat()` writes it.
pub fn iso_datetime(unix_secs: f64) -> String {
    let micros_total = (unix_secs * 1_000_000.0).round() as i64;
    let secs = micros_total.div_euclid(1_000_000);
    let micros = micros_total.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}", sod / 3600, (sod % 3600) / 60, sod % 60)
}

/// Unix seconds with sub-second precision, as Python's `time.time()`.
pub fn unix_time_f64() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_datetime_matches_python() {
        assert_eq!(iso_datetime(1795565301.5), "2026-11-25T00:08:21.500000");
        assert_eq!(iso_datetime(0.0), "1970-01-01T00:00:00.000000");
        assert_eq!(iso_datetime(951782400.25), "2000-02-29T00:00:00.250000");
    }

    #[test]
    fn prompt_becomes_a_user_turn_and_neither_is_none() {
        let r: ChallengeRequest = serde_json::from_str(r#"{"prompt":"hi","messages":null}"#).unwrap();
        assert_eq!(r.conversation().unwrap(), vec![ChatMessage::new("user", "hi")]);
        let r: ChallengeRequest = serde_json::from_str(r#"{"prompt":null,"messages":null}"#).unwrap();
        assert!(r.conversation().is_none());
    }

    #[test]
    fn timing_echo_keeps_unknown_fields() {
        let meta: Map<String, Value> =
            serde_json::from_str(r#"{"timing_data":{"x":1,"stages":[{"stage_name":"validator_send"}]},"other":true}"#)
                .unwrap();
        let out = echo_timing(Some(&meta), 1.0, 2.0, 2.0).unwrap();
        let stages = out["timing_data"]["stages"].as_array().unwrap();
        let names: Vec<_> = stages.iter().map(|s| s["stage_name"].as_str().unwrap()).collect();
        assert_eq!(names, ["validator_send", "miner_inference", "miner_response"]);
        assert_eq!(out["timing_data"]["x"], 1);
        assert_eq!(out["other"], true);
        assert_eq!(stages[1]["elapsed_ms"], 1000.0);
        assert!(echo_timing(None, 1.0, 2.0, 2.0).is_none());
    }

    #[test]
    fn validator_floats_survive_the_echo_bit_for_bit() {
        // serde_json's default float parser is off by one ulp on numbers like these; the validator
        // compares what we echo, so parsing must round-trip exactly.
        let text = r#"{"timing_data":{"request_start_timestamp":1795569790.503868,"stages":[]}}"#;
        let meta: Map<String, Value> = serde_json::from_str(text).unwrap();
        let out = echo_timing(Some(&meta), 1.0, 2.0, 2.0).unwrap();
        assert!(serde_json::to_string(&out).unwrap().contains("1795569790.503868"));
    }
}
