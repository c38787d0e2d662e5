//! The embedded llama.cpp engine: one GGUF model and one context, owned by one OS thread.
//!
//! llama.cpp's decode is blocking, CPU- or GPU-bound work that must never run on an async worker
//! thread, and its context is not shareable, so each embedded worker runs this engine on a thread of
//! its own and receives jobs over a channel. The thread checks the request's deadline between
//! tokens (and between prompt chunks) and stops in time, returning what it has with
//! `finish_reason: "length"`: an answer cut at 50 s scores, an answer at 61 s does not.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use super::chat_template::{ChatTemplate, CHATML_TEMPLATE};
use super::request::{BackendError, FinishReason, Generation, GenerationRequest};
use super::tool_calls::extract_tool_calls;

/// How one embedded engine is set up (one per worker / device).
#[derive(Debug, Clone)]
pub struct EmbeddedSpec {
    pub model_path: PathBuf,
    /// Context window in tokens (prompt + completion). 0 = the model's training context.
    pub n_ctx: u32,
    /// CPU threads for generation and prompt processing.
    pub threads: i32,
    /// Layers offloaded to the GPU (0 on CPU builds).
    pub gpu_layers: u32,
    /// The GPU this engine lives on, when it has one.
    pub main_gpu: Option<i32>,
    /// Prompt tokens decoded per llama.cpp batch.
    pub n_batch: u32,
}

/// What a loaded engine reports about itself.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub description: String,
    pub n_ctx: u32,
    pub native_tools: bool,
}

/// The process-wide llama.cpp backend: llama.cpp allows one initialisation per process.
pub fn backend() -> Result<&'static LlamaBackend, BackendError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(true),
            );
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| BackendError::ModelLoad(format!("llama.cpp backend: {e}")))
}

/// A loaded model and its context. Lives on its worker's thread.
pub struct EmbeddedEngine<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    template: ChatTemplate,
    n_batch: u32,
    /// Smoothed seconds per generated token, to stop one token before the deadline rather than after.
    secs_per_token: f64,
}

/// Loads the model file (the expensive part; call once per worker thread).
pub fn load_model(spec: &EmbeddedSpec) -> Result<LlamaModel, BackendError> {
    if !spec.model_path.is_file() {
        return Err(BackendError::ModelLoad(format!(
            "{} does not exist or is not a file",
            spec.model_path.display()
        )));
    }
    let mut params = LlamaModelParams::default().with_n_gpu_layers(spec.gpu_layers);
    if let Some(gpu) = spec.main_gpu {
        params = params.with_main_gpu(gpu);
    }
    LlamaModel::load_from_file(backend()?, &spec.model_path, &params)
        .map_err(|e| BackendError::ModelLoad(format!("{}: {e}", spec.model_path.display())))
}

impl<'m> EmbeddedEngine<'m> {
    /// Makes the context and compiles the chat template for a loaded model.
    pub fn new(model: &'m LlamaModel, spec: &EmbeddedSpec) -> Result<Self, BackendError> {
        let n_ctx = if spec.n_ctx == 0 {
            model.n_ctx_train()
        } else {
            spec.n_ctx.min(model.n_ctx_train().max(1))
        };
        let n_batch = spec.n_batch.clamp(32, n_ctx.max(32));
        let threads = spec.threads.max(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| BackendError::ModelLoad(format!("context of {n_ctx} tokens: {e}")))?;
        let source = model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .unwrap_or_else(|| CHATML_TEMPLATE.to_string());
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let template = ChatTemplate::new(&source, &piece(vocab.bos()), &piece(vocab.eos()))
            .or_else(|e| {
                tracing::warn!(error = %e, "the model's chat template does not compile; using ChatML");
                ChatTemplate::new(CHATML_TEMPLATE, "", "")
            })
            .map_err(|e| BackendError::Template(e.to_string()))?;
        Ok(Self {
            model,
            ctx,
            template,
            n_batch,
            secs_per_token: 0.0,
        })
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            description: format!(
                "{} params, {} layers",
                self.model.n_params(),
                self.model.n_layer()
            ),
            n_ctx: self.ctx.n_ctx(),
            native_tools: self.template.has_native_tools(),
        }
    }

    /// Tokenises a rendered prompt (also used by the benchmark's direct llama.cpp path).
    pub fn tokenize(&self, prompt: &str) -> Vec<llama_cpp_2::token::LlamaToken> {
        let vocab = self.model.vocab();
        let bos_text =
            String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
        let add_bos =
            vocab.should_add_bos() && (bos_text.is_empty() || !prompt.starts_with(&bos_text));
        vocab.tokenize(prompt.as_bytes(), add_bos, true)
    }

    /// Renders the conversation with the model's chat template.
    pub fn render(&self, req: &GenerationRequest) -> Result<String, BackendError> {
        self.template
            .render(&req.messages, req.tools.as_deref())
            .map_err(|e| BackendError::Template(e.to_string()))
    }

    /// Runs one request to completion, to `max_tokens`, to a stop string, or to the deadline.
    pub fn generate(&mut self, req: &GenerationRequest) -> Result<Generation, BackendError> {
        let started_at = Instant::now();
        let prompt = self.render(req)?;
        let tokens = self.tokenize(&prompt);
        let n_ctx = self.ctx.n_ctx();
        let prompt_tokens = tokens.len() as u32;
        if prompt_tokens == 0 || prompt_tokens >= n_ctx {
            return Err(BackendError::PromptTooLong {
                prompt_tokens,
                n_ctx,
            });
        }
        // max_tokens is clamped to the context left after the prompt.
        let max_new = req.max_tokens.min(n_ctx - prompt_tokens);

        self.ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(self.n_batch as usize, 1);
        let last = tokens.len() - 1;
        for (chunk_start, chunk) in tokens
            .chunks(self.n_batch as usize)
            .enumerate()
            .map(|(i, c)| (i * self.n_batch as usize, c))
        {
            if Instant::now() >= req.deadline {
                return Ok(self.finish(
                    String::new(),
                    FinishReason::Length,
                    prompt_tokens,
                    0,
                    None,
                    started_at,
                    true,
                ));
            }
            batch.clear();
            for (j, t) in chunk.iter().enumerate() {
                let pos = chunk_start + j;
                batch
                    .add(*t, pos as i32, &[0], pos == last)
                    .map_err(|e| BackendError::Inference(e.to_string()))?;
            }
            self.ctx
                .decode(&mut batch)
                .map_err(|e| BackendError::Inference(format!("prompt decode: {e}")))?;
        }

        let mut sampler = sampler_for(req.temperature, req.top_p);
        let vocab = self.model.vocab();
        let mut logits_idx = batch.n_tokens() - 1;
        let mut pos = prompt_tokens as i32;
        let mut out: Vec<u8> = Vec::new();
        let mut completion = 0u32;
        let mut first_token_at = None;
        let mut finish = FinishReason::Length;
        let mut cut = false;
        let mut last_tick = Instant::now();
        loop {
            if completion >= max_new {
                break;
            }
            // Stop when the next token would likely land past the deadline.
            let margin = Duration::from_secs_f64((self.secs_per_token * 2.0).min(1.0));
            if Instant::now() + margin >= req.deadline {
                cut = true;
                break;
            }
            let token = sampler.sample(&self.ctx, logits_idx);
            if vocab.is_eog(token) {
                finish = FinishReason::Stop;
                break;
            }
            out.extend_from_slice(&vocab.token_to_piece(token, false, None));
            completion += 1;
            let now = Instant::now();
            first_token_at.get_or_insert(now);
            if let Some(cut_at) = stop_string_end(&out, &req.stop) {
                out.truncate(cut_at);
                finish = FinishReason::Stop;
                break;
            }
            batch.clear();
            batch
                .add(token, pos, &[0], true)
                .map_err(|e| BackendError::Inference(e.to_string()))?;
            pos += 1;
            self.ctx
                .decode(&mut batch)
                .map_err(|e| BackendError::Inference(format!("decode: {e}")))?;
            logits_idx = 0;
            let tick = Instant::now();
            let dt = tick.duration_since(last_tick).as_secs_f64();
            last_tick = tick;
            self.secs_per_token = if self.secs_per_token == 0.0 {
                dt
            } else {
                0.8 * self.secs_per_token + 0.2 * dt
            };
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        Ok(self.finish(
            text,
            finish,
            prompt_tokens,
            completion,
            first_token_at,
            started_at,
            cut,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        text: String,
        finish: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        first_token_at: Option<Instant>,
        started_at: Instant,
        cut_by_deadline: bool,
    ) -> Generation {
        let (text, tool_calls) = extract_tool_calls(&text);
        let finish_reason = if !tool_calls.is_empty() && finish == FinishReason::Stop {
            FinishReason::ToolCalls
        } else {
            finish
        };
        Generation {
            text,
            tool_calls,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            first_token_at,
            started_at,
            finished_at: Instant::now(),
            cut_by_deadline,
        }
    }
}

/// The validator's sampling settings: nucleus then temperature then a random draw. Greedy only when
/// temperature is 0 (the validator flags near-identical answers as sybils, so never a fixed seed).
pub fn sampler_for(temperature: f32, top_p: f32) -> LlamaSampler {
    if temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let top_p = if top_p > 0.0 && top_p < 1.0 {
        top_p
    } else {
        1.0
    };
    LlamaSampler::chain_simple([
        LlamaSampler::top_p(top_p, 1),
        LlamaSampler::temp(temperature),
        LlamaSampler::dist(rand::random()),
    ])
}

/// Where the text should be cut if it now ends with a stop string. Checked after every token, so
/// only the tail can hold a new match: the search stays O(1) per token.
fn stop_string_end(out: &[u8], stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).find_map(|s| {
        let from = out.len().saturating_sub(s.len() + 32);
        out[from..]
            .windows(s.len())
            .position(|w| w == s.as_bytes())
            .map(|p| from + p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_their_start() {
        assert_eq!(stop_string_end(b"hello END", &["END".into()]), Some(6));
        assert_eq!(stop_string_end(b"hello", &["END".into()]), None);
        assert_eq!(stop_string_end(b"hello", &[]), None);
    }
}
