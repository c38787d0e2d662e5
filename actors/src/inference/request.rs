//! What a backend worker is asked to do and what it gives back, independent of the engine.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::watch;

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
    /// This attempt's signals to and from the scheduler: its first token, and a cancel.
    pub control: JobControl,
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
            control: JobControl::default(),
        }
    }

    /// The same challenge as a fresh attempt (its own control): what a hedge or a re-dispatch sends.
    pub fn new_attempt(&self) -> Self {
        Self { control: JobControl::default(), ..self.clone() }
    }
}

/// Signals shared by the scheduler and the engine running one attempt of a challenge.
///
/// The scheduler races a slow attempt against a second one on an idle worker (hedging): it must
/// learn when an attempt produced its first token, and stop the one that lost so that its sequence
/// is free for the next challenge. Engines check [`Self::is_cancelled`] between tokens, as they
/// check the deadline, and call [`Self::first_token`] when they sample one. Both are `watch`
/// channels so that a plain thread (the embedded engine) can set them and a task can await them.
/// Cloning shares the signals; [`GenerationRequest::new_attempt`] makes fresh ones.
#[derive(Debug, Clone)]
pub struct JobControl {
    first_token: Arc<watch::Sender<bool>>,
    cancelled: Arc<watch::Sender<bool>>,
}

impl Default for JobControl {
    fn default() -> Self {
        Self { first_token: Arc::new(watch::Sender::new(false)), cancelled: Arc::new(watch::Sender::new(false)) }
    }
}

impl JobControl {
    /// The engine sampled this attempt's first token (idempotent).
    pub fn first_token(&self) {
        self.first_token.send_if_modified(|seen| !std::mem::replace(seen, true));
    }

    pub fn has_first_token(&self) -> bool {
        *self.first_token.borrow()
    }

    /// Resolves once the attempt has a token.
    pub async fn wait_first_token(&self) {
        let mut rx = self.first_token.subscribe();
        // The sender lives in `self`: the channel cannot close while we wait.
        let _ = rx.wait_for(|seen| *seen).await;
    }

    /// Asks the engine to stop this attempt and free its sequence.
    pub fn cancel(&self) {
        self.cancelled.send_if_modified(|c| !std::mem::replace(c, true));
    }

    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Resolves once the attempt is cancelled.
    pub async fn wait_cancelled(&self) {
        let mut rx = self.cancelled.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Why a backend could not answer. Serde: an engine child process sends it to its worker.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackendError {
    #[error("model failed to load: {0}")]
    ModelLoad(String),
    #[error("the prompt has {prompt_tokens} tokens but the context holds {n_ctx}")]
    PromptTooLong { prompt_tokens: u32, n_ctx: u32 },
    /// Refused by its byte length alone, before the template renders it or the tokenizer reads it:
    /// even at the model's longest token it would not fit the context.
    #[error("the prompt's text is {bytes} bytes, more than a context of {n_ctx} tokens holds (at most {max_bytes} bytes of this model's longest tokens)")]
    PromptTooLarge { bytes: u64, max_bytes: u64, n_ctx: u32 },
    #[error("{0}")]
    Template(String),
    /// A `tool_choice` the engine cannot honour (see [`super::tool_choice::ToolChoiceError`]);
    /// the front door refuses these first, so this reaches only callers of the engine itself.
    #[error("{0}")]
    ToolChoice(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the backend worker stopped while handling the request")]
    WorkerGone,
    #[error("backend server unreachable: {0}")]
    Unreachable(String),
    /// The backend answered with something no honest server sends (a tool call numbered in the
    /// billions, more text than `max_tokens` allows, a line without end): a bad gateway.
    #[error("the backend misbehaved: {0}")]
    Misbehaved(String),
    /// The scheduler stopped this attempt (another one of the same challenge won the race).
    #[error("the attempt was cancelled")]
    Cancelled,
}
