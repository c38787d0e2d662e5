//! What a backend worker is asked to do and what it gives back, independent of the engine.

use std::time::Instant;

use serde_json::Value;

use crate::protocol::messages::{ChatMessage, ToolCall};

/// One generation, with everything needed to honour the validator's request and its deadline.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub stop: Vec<String>,
    /// The instant by which the answer must be back in the HTTP layer's hands.
    pub deadline: Instant,
}

impl GenerationRequest {
    /// A single user turn with the validator's default sampling (temperature 0.7, top_p 0.95):
    /// what probes, benchmarks and tests send.
    pub fn one_turn(prompt: &str, max_tokens: u32, deadline: Instant) -> Self {
        Self {
            messages: vec![ChatMessage::new("user", prompt)],
            tools: None,
            tool_choice: None,
            max_tokens,
            temperature: 0.7,
            top_p: 0.95,
            stop: Vec::new(),
            deadline,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// When the first token was sampled (None if none was).
    pub first_token_at: Option<Instant>,
    pub started_at: Instant,
    pub finished_at: Instant,
    /// Whether the deadline, not `max_tokens` or the model, ended the generation.
    pub cut_by_deadline: bool,
    /// The worker that generated it: set by the scheduler (engines leave it empty), for the log.
    pub worker: String,
}

/// Why a backend could not answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("model failed to load: {0}")]
    ModelLoad(String),
    #[error("the prompt has {prompt_tokens} tokens but the context holds {n_ctx}")]
    PromptTooLong { prompt_tokens: u32, n_ctx: u32 },
    #[error("{0}")]
    Template(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the backend worker stopped while handling the request")]
    WorkerGone,
    #[error("backend server unreachable: {0}")]
    Unreachable(String),
}
