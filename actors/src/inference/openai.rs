//! A worker backend that is any OpenAI-compatible chat server: vLLM, Ollama, llama-server,
//! SGLang, TGI, llama-cpp-python. One endpoint per worker, local or on another host.
//!
//! Requests are streamed (SSE) so that at the challenge deadline the worker returns what has
//! arrived with `finish_reason: "length"` instead of nothing; the dropped connection tells the
//! server to stop. There are no hidden retries: a failed request is an error the scheduler sees.
//! Dialect differences handled here: tool-call arguments as objects (Ollama) or strings (OpenAI,
//! vLLM), `reasoning` / `reasoning_content` deltas (not part of the answer text), usage only in
//! the last chunk or not at all.
//!
//! The server is not trusted with the node's memory or time: its SSE lines are split searching
//! each byte once and capped in length (`sse.rs`), the answer is capped near what `max_tokens`
//! allows and tool-call indexes are bounded (`openai_stream.rs`), and `GET /models` is read up to
//! a cap. Past any of them the backend misbehaved: a 502 for that challenge, never the node's end.
//!
//! `max_tokens` is clamped to the context the server has left after the prompt: vLLM refuses
//! (400) a request whose prompt plus `max_tokens` passes its `--max-model-len`, and the
//! validator asks for 12,288 tokens. The context length comes from `GET /models` where the server
//! reports it (vLLM's `max_model_len`, llama-server's `meta.n_ctx_train`), else from the worker's
//! `max_model_len` setting; llama-cpp-python reports none.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::openai_stream::{Flow, StreamedAnswer};
use super::request::{BackendError, FinishReason, Generation, GenerationRequest};
use super::sse::LineReader;
use super::tool_calls::extract_tool_calls;
use crate::bounded_body::{read_json_capped, SMALL_ANSWER_CAP};
use crate::protocol::messages::{ToolCall, ToolCallFunction};

/// Bytes of an error body kept for the message.
const ERROR_BODY_CAP: usize = 4096;
/// Longest SSE line buffered before the stream is treated as broken: an event is a few hundred
/// bytes, and Ollama's whole tool-call arguments in one event are far below this.
const SSE_LINE_CAP: usize = 256 * 1024;

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSpec {
    /// Base URL including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model name the server serves.
    pub model: String,
    /// Requests sent to this server at once.
    pub n_parallel: u32,
    /// Optional bearer token (redacted in `Debug`).
    pub api_key: Option<crate::protocol::secret::Secret>,
    /// Upper bound for one request when the deadline is further away (OLLAMA_TIMEOUT).
    pub request_timeout: Duration,
    /// How often the worker checks `GET /models` while idle.
    pub health_every: Duration,
    /// The server's context length when `GET /models` does not say (`max_model_len` in `WORKERS`,
    /// `OPENAI_MAX_MODEL_LEN`); `None` and unreported: `max_tokens` is sent as asked.
    pub max_model_len: Option<u32>,
}

/// A client for one endpoint. Cheap to clone.
#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    spec: OpenAiSpec,
    /// The context length the server reported at its last health check (0: none reported).
    reported_context: Arc<AtomicU32>,
}

impl OpenAiClient {
    pub fn new(spec: OpenAiSpec) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(spec.n_parallel.max(1) as usize * 2)
            .build()
            .map_err(|e| BackendError::ModelLoad(format!("HTTP client: {e}")))?;
        Ok(Self { http, spec, reported_context: Arc::new(AtomicU32::new(0)) })
    }

    /// The server's context length: what it reports, else the setting.
    pub fn context_len(&self) -> Option<u32> {
        match self.reported_context.load(Ordering::Relaxed) {
            0 => self.spec.max_model_len,
            n => Some(n),
        }
    }

    pub fn spec(&self) -> &OpenAiSpec {
        &self.spec
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.spec.base_url.trim_end_matches('/'), path)
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.spec.api_key {
            Some(key) => req.bearer_auth(key.expose()),
            None => req,
        }
    }

    /// `GET /models`: the server answers and lists models. Returns their ids.
    pub async fn health(&self) -> Result<Vec<String>, BackendError> {
        let url = self.url("/models");
        let res = self
            .authorize(self.http.get(&url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| BackendError::Unreachable(format!("{url}: {e}")))?;
        if !res.status().is_success() {
            return Err(BackendError::Unreachable(format!("{url} answered {}", res.status())));
        }
        // A list of models is a few KiB: an answer without end is refused at the cap.
        let v: Value = read_json_capped(res, SMALL_ANSWER_CAP)
            .await
            .map_err(|e| BackendError::Unreachable(format!("{url}: {e}")))?;
        if let Some(n) = reported_context(&v, &self.spec.model) {
            self.reported_context.store(n, Ordering::Relaxed);
        }
        Ok(v["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_str().map(String::from)).collect())
            .unwrap_or_default())
    }

    fn body(&self, req: &GenerationRequest, max_tokens: u32) -> Value {
        let mut body = json!({
            "model": self.spec.model,
            "messages": req.messages,
            "max_tokens": max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        if let Some(tools) = req.tools.as_ref().filter(|t| !t.is_empty()) {
            body["tools"] = json!(tools);
            if let Some(choice) = &req.tool_choice {
                body["tool_choice"] = choice.clone();
            }
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        body
    }

    /// `max_tokens` for `req`, clamped to the context left after its prompt (estimated).
    /// `Err(PromptTooLong)` when the prompt alone fills the context: the server would refuse it.
    pub fn clamped_max_tokens(&self, req: &GenerationRequest) -> Result<u32, BackendError> {
        let Some(n_ctx) = self.context_len() else { return Ok(req.max_tokens) };
        let prompt_tokens = estimate_prompt_tokens(req);
        if prompt_tokens >= n_ctx {
            return Err(BackendError::PromptTooLong { prompt_tokens, n_ctx });
        }
        Ok(req.max_tokens.min(n_ctx - prompt_tokens))
    }

    /// One chat completion, streamed until done, until the request's deadline, or until the
    /// scheduler cancels the attempt (dropping the stream tells the server to stop).
    pub async fn chat(&self, req: &GenerationRequest) -> Result<Generation, BackendError> {
        tokio::select! {
            biased;
            () = req.control.wait_cancelled() => Err(BackendError::Cancelled),
            result = self.stream_chat(req) => result,
        }
    }

    async fn stream_chat(&self, req: &GenerationRequest) -> Result<Generation, BackendError> {
        let started_at = Instant::now();
        let max_tokens = self.clamped_max_tokens(req)?;
        let deadline = req.deadline.min(started_at + self.spec.request_timeout);
        let deadline_tokio = tokio::time::Instant::from_std(deadline);
        let url = self.url("/chat/completions");
        let send = self.authorize(self.http.post(&url)).json(&self.body(req, max_tokens)).send();
        let mut res = match tokio::time::timeout_at(deadline_tokio, send).await {
            Err(_) => return Ok(empty_cut(started_at)),
            Ok(Err(e)) => return Err(BackendError::Unreachable(format!("{url}: {e}"))),
            Ok(Ok(res)) => res,
        };
        if !res.status().is_success() {
            let status = res.status();
            // Only the start of the error body is kept, read by the same deadline: a server that
            // answers 500 and then trickles (or streams megabytes) must not hold the worker.
            let mut head: Vec<u8> = Vec::new();
            while head.len() < ERROR_BODY_CAP {
                match tokio::time::timeout_at(deadline_tokio, res.chunk()).await {
                    Ok(Ok(Some(bytes))) => head.extend_from_slice(&bytes),
                    _ => break,
                }
            }
            let text = String::from_utf8_lossy(&head[..head.len().min(ERROR_BODY_CAP)]);
            return Err(BackendError::Inference(format!(
                "{url} answered {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }

        let mut answer = StreamedAnswer::new(max_tokens);
        let mut lines = LineReader::new();
        let mut cut = false;
        'read: loop {
            let chunk = match tokio::time::timeout_at(deadline_tokio, res.chunk()).await {
                Err(_) => {
                    cut = true;
                    break;
                }
                Ok(Err(e)) => return Err(BackendError::Unreachable(format!("{url}: stream broke: {e}"))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(bytes))) => bytes,
            };
            lines.push(&chunk);
            while let Some(line) = lines.next_line() {
                if answer.line(line, &req.control, &url)? == Flow::Done {
                    break 'read;
                }
            }
            if lines.pending() > SSE_LINE_CAP {
                // One SSE event is a few hundred bytes; a line this long without a newline is not
                // an event we will ever parse.
                return Err(BackendError::Misbehaved(format!(
                    "{url}: an SSE line passed {SSE_LINE_CAP} bytes without ending"
                )));
            }
        }
        let StreamedAnswer { text, calls, finish, usage, deltas, first_token_at, .. } = answer;

        let (mut prose, parsed) = extract_tool_calls(&text);
        if parsed.is_empty() {
            prose = text.trim().to_string();
        }
        let mut tool_calls: Vec<ToolCall> = calls
            .into_iter()
            .filter(|c| !c.name.is_empty())
            .map(|c| ToolCall {
                id: if c.id.is_empty() { format!("call_{}", hex::encode(rand::random::<[u8; 12]>())) } else { c.id },
                kind: "function".into(),
                function: ToolCallFunction {
                    name: c.name,
                    arguments: if c.arguments.is_empty() { "{}".into() } else { c.arguments },
                },
            })
            .collect();
        tool_calls.extend(parsed);
        let finish_reason = if cut {
            FinishReason::Length
        } else if !tool_calls.is_empty() {
            FinishReason::ToolCalls
        } else {
            match finish.as_deref() {
                Some("length") => FinishReason::Length,
                Some("tool_calls") => FinishReason::ToolCalls,
                _ => FinishReason::Stop,
            }
        };
        let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, deltas));
        Ok(Generation {
            text: prose,
            tool_calls,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            first_token_at,
            started_at,
            finished_at: Instant::now(),
            cut_by_deadline: cut,
            worker: String::new(),
        })
    }
}

/// The context length `GET /models` reports for `model` (or for the only model listed): vLLM's
/// `max_model_len`, else llama-server's `meta.n_ctx_train`.
fn reported_context(models: &Value, model: &str) -> Option<u32> {
    let data = models["data"].as_array()?;
    let entry =
        data.iter().find(|m| m["id"].as_str() == Some(model)).or(if data.len() == 1 { data.first() } else { None })?;
    let n = entry["max_model_len"].as_u64().or_else(|| entry["meta"]["n_ctx_train"].as_u64())?;
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// Characters per token assumed when counting a prompt without the server's tokenizer: English
/// runs near 4, code and other scripts lower; 3 errs on the side of a shorter `max_tokens`, which
/// costs nothing (the deadline ends generation long before 12,288 tokens), where too long a one
/// costs the whole answer.
const CHARS_PER_TOKEN: usize = 3;
/// Tokens a chat template adds per message (role markers, separators).
const TOKENS_PER_MESSAGE: u32 = 8;

/// A conservative count of the prompt tokens `req` becomes on the server, without a round trip
/// to its tokenizer (that would add a request to every challenge's time to first token).
pub fn estimate_prompt_tokens(req: &GenerationRequest) -> u32 {
    let text: usize =
        req.messages.iter().map(|m| serde_json::to_string(m).map_or(0, |s| s.chars().count())).sum::<usize>()
            + req.tools.as_ref().map_or(0, |t| serde_json::to_string(t).map_or(0, |s| s.chars().count()));
    let tokens =
        text.div_ceil(CHARS_PER_TOKEN) as u64 + u64::from(TOKENS_PER_MESSAGE) * (req.messages.len() as u64 + 1);
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// Nothing arrived before the deadline.
fn empty_cut(started_at: Instant) -> Generation {
    Generation {
        text: String::new(),
        tool_calls: Vec::new(),
        finish_reason: FinishReason::Length,
        prompt_tokens: 0,
        completion_tokens: 0,
        first_token_at: None,
        started_at,
        finished_at: Instant::now(),
        cut_by_deadline: true,
        worker: String::new(),
    }
}

/// Normalises a base URL from the Python miner's settings: `OLLAMA_BASE_URL` has no `/v1`.
pub fn with_v1(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1") {
        base.to_string()
    } else {
        format!("{base}/v1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_length_is_read_where_servers_report_it() {
        let vllm = json!({"data": [{"id": "Qwen/Qwen2.5-32B", "max_model_len": 16384}]});
        assert_eq!(reported_context(&vllm, "Qwen/Qwen2.5-32B"), Some(16384));
        let llama_server = json!({"data": [{"id": "model.gguf", "meta": {"n_ctx_train": 32768}}]});
        assert_eq!(reported_context(&llama_server, "other-name"), Some(32768), "the only model listed");
        let llama_cpp_python = json!({"data": [{"id": "smollm2", "owned_by": "me"}]});
        assert_eq!(reported_context(&llama_cpp_python, "smollm2"), None);
        let two = json!({"data": [{"id": "a", "max_model_len": 1}, {"id": "b", "max_model_len": 2}]});
        assert_eq!(reported_context(&two, "c"), None, "another model's length says nothing about ours");
    }

    fn client(max_model_len: Option<u32>) -> OpenAiClient {
        OpenAiClient::new(OpenAiSpec {
            base_url: "http://127.0.0.1:9/v1".into(),
            model: "m".into(),
            n_parallel: 1,
            api_key: None,
            request_timeout: Duration::from_secs(1),
            health_every: Duration::from_secs(1),
            max_model_len,
        })
        .unwrap()
    }

    #[test]
    fn max_tokens_is_clamped_to_the_context_left_after_the_prompt() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let long = GenerationRequest::one_turn(&"word ".repeat(3000), 12_288, deadline);
        let prompt = estimate_prompt_tokens(&long);
        assert!(prompt >= 15_000 / 4, "a 15,000-character prompt counts as at least 3,750 tokens: {prompt}");
        assert_eq!(client(Some(8192)).clamped_max_tokens(&long), Ok(8192 - prompt));
        assert_eq!(client(None).clamped_max_tokens(&long), Ok(12_288), "no context known: sent as asked");
        let short = GenerationRequest::one_turn("hi", 100, deadline);
        assert_eq!(client(Some(8192)).clamped_max_tokens(&short), Ok(100));
        assert!(matches!(client(Some(1000)).clamped_max_tokens(&long), Err(BackendError::PromptTooLong { .. })));
    }

    #[test]
    fn base_urls_get_v1_once() {
        assert_eq!(with_v1("http://localhost:11434"), "http://localhost:11434/v1");
        assert_eq!(with_v1("http://localhost:8000/v1/"), "http://localhost:8000/v1");
    }
}
