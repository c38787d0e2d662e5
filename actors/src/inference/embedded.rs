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
use llama_cpp_2::token::LlamaToken;

use super::chat_template::{ChatTemplate, CHATML_TEMPLATE};
use super::request::{BackendError, FinishReason, Generation, GenerationRequest};
use super::sampler::TokenSampler;
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
    /// The llama.cpp (ggml) device this engine's layers live on, when it has a GPU; `None` lets
    /// llama.cpp choose (CPU builds, or a single GPU).
    pub gpu_device: Option<usize>,
    /// Prompt tokens decoded per llama.cpp batch.
    pub n_batch: u32,
    /// Sequences generated together in one context (continuous batching); `n_ctx` is per sequence.
    pub n_parallel: u32,
}

/// What a loaded engine reports about itself.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub description: String,
    /// Context per sequence.
    pub n_ctx: u32,
    pub n_parallel: usize,
    pub native_tools: bool,
}

/// The process-wide llama.cpp backend: llama.cpp allows one initialisation per process.
pub fn backend() -> Result<&'static LlamaBackend, BackendError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(true));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| BackendError::ModelLoad(format!("llama.cpp backend: {e}")))
}

/// The GPUs llama.cpp sees (CUDA builds; `CUDA_VISIBLE_DEVICES` applies), as (device index,
/// description). Empty on CPU builds.
pub fn gpu_devices() -> Vec<(usize, String)> {
    if backend().is_err() {
        return Vec::new();
    }
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| d.backend.eq_ignore_ascii_case("CUDA"))
        .map(|d| (d.index, format!("{} ({} MiB)", d.description, d.memory_total / (1024 * 1024))))
        .collect()
}

/// One sequence being generated: its request, sampler, progress and output.
struct Slot<T> {
    tag: T,
    seq: i32,
    deadline: Instant,
    stop: Vec<String>,
    max_new: u32,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded (prefill progress).
    prefilled: usize,
    /// Next KV position of this sequence.
    pos: i32,
    sampler: TokenSampler,
    /// The token sampled last step, to be decoded this step.
    pending: Option<LlamaToken>,
    /// Where this sequence's logits sit in the batch just decoded.
    logits_at: Option<i32>,
    out: Vec<u8>,
    completion: u32,
    first_token_at: Option<Instant>,
    started_at: Instant,
}

/// A loaded model and one context holding up to `n_parallel` sequences, decoded together
/// (continuous batching): each step decodes one token for every generating sequence plus as much
/// prompt of newly admitted sequences as the batch holds. A sequence joins or leaves between
/// steps, so a short challenge never waits for a long one to finish. Lives on its worker's thread.
///
/// `T` is whatever the caller needs back with a finished generation (a reply port).
pub struct EmbeddedEngine<'m, T> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    template: ChatTemplate,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    /// Context available to one sequence.
    n_ctx_seq: u32,
    slots: Vec<Option<Slot<T>>>,
    /// Smoothed seconds per decode step, to stop one step before a deadline rather than after.
    secs_per_step: f64,
}

/// Loads the model file (the expensive part; call once per worker thread).
pub fn load_model(spec: &EmbeddedSpec) -> Result<LlamaModel, BackendError> {
    if !spec.model_path.is_file() {
        return Err(BackendError::ModelLoad(format!("{} does not exist or is not a file", spec.model_path.display())));
    }
    let mut params = LlamaModelParams::default().with_n_gpu_layers(spec.gpu_layers);
    if let Some(device) = spec.gpu_device {
        // One worker per GPU: every layer on this device, none split onto the others.
        params = params
            .with_devices(&[device])
            .map_err(|e| BackendError::ModelLoad(format!("GPU device {device}: {e}")))?
            .with_split_mode(llama_cpp_2::model::params::LlamaSplitMode::None);
    }
    LlamaModel::load_from_file(backend()?, &spec.model_path, &params)
        .map_err(|e| BackendError::ModelLoad(format!("{}: {e}", spec.model_path.display())))
}

/// The chat template stored in a model's GGUF (ChatML when there is none or it does not compile).
pub fn model_template(model: &LlamaModel) -> Result<ChatTemplate, BackendError> {
    let source =
        model.chat_template(None).ok().and_then(|t| t.to_string().ok()).unwrap_or_else(|| CHATML_TEMPLATE.to_string());
    let vocab = model.vocab();
    let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    ChatTemplate::new(&source, &piece(vocab.bos()), &piece(vocab.eos()))
        .or_else(|e| {
            tracing::warn!(error = %e, "the model's chat template does not compile; using ChatML");
            ChatTemplate::new(CHATML_TEMPLATE, "", "")
        })
        .map_err(|e| BackendError::Template(e.to_string()))
}

/// Tokenises a rendered prompt, adding BOS only when the model wants it and the template did not.
pub fn tokenize_prompt(model: &LlamaModel, prompt: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let bos_text = String::from_utf8_lossy(&vocab.token_to_piece(vocab.bos(), true, None)).into_owned();
    let add_bos = vocab.should_add_bos() && (bos_text.is_empty() || !prompt.starts_with(&bos_text));
    vocab.tokenize(prompt.as_bytes(), add_bos, true)
}

impl<'m, T> EmbeddedEngine<'m, T> {
    /// Makes the context (`n_ctx` per sequence × `n_parallel`) and compiles the chat template.
    pub fn new(model: &'m LlamaModel, spec: &EmbeddedSpec) -> Result<Self, BackendError> {
        let n_parallel = spec.n_parallel.max(1);
        let n_ctx_seq = if spec.n_ctx == 0 { model.n_ctx_train() } else { spec.n_ctx.min(model.n_ctx_train().max(1)) };
        let n_batch = spec.n_batch.max(n_parallel).clamp(32, 8192);
        let threads = spec.threads.max(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx_seq * n_parallel))
            .with_n_seq_max(n_parallel)
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model.new_context(backend()?, params).map_err(|e| {
            BackendError::ModelLoad(format!("context of {n_ctx_seq} tokens x {n_parallel} sequences: {e}"))
        })?;
        // llama.cpp pads the context; each sequence gets an equal share of what it made.
        let n_ctx_seq = ctx.n_ctx() / n_parallel;
        let template = model_template(model)?;
        let slots = (0..n_parallel).map(|_| None).collect();
        Ok(Self {
            model,
            ctx,
            template,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            n_ctx_seq,
            slots,
            secs_per_step: 0.0,
        })
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            description: format!("{} params, {} layers", self.model.n_params(), self.model.n_layer()),
            n_ctx: self.n_ctx_seq,
            n_parallel: self.slots.len(),
            native_tools: self.template.has_native_tools(),
        }
    }

    /// Sequences being prefilled or generated.
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn has_free_slot(&self) -> bool {
        self.slots.iter().any(Option::is_none)
    }

    /// Starts a request in a free sequence. Fails at once (handing `tag` back) when the request
    /// cannot run: template error, or a prompt that does not fit the sequence's context. The caller
    /// checks [`Self::has_free_slot`] first.
    pub fn admit(&mut self, req: GenerationRequest, tag: T) -> Result<(), (T, BackendError)> {
        let started_at = Instant::now();
        let Some(index) = self.slots.iter().position(Option::is_none) else {
            return Err((tag, BackendError::Inference("no free sequence".into())));
        };
        let prompt = match self.template.render(&req.messages, req.tools.as_deref()) {
            Ok(p) => tokenize_prompt(self.model, &p),
            Err(e) => return Err((tag, BackendError::Template(e.to_string()))),
        };
        let prompt_tokens = prompt.len() as u32;
        if prompt_tokens == 0 || prompt_tokens >= self.n_ctx_seq {
            return Err((tag, BackendError::PromptTooLong { prompt_tokens, n_ctx: self.n_ctx_seq }));
        }
        let seq = index as i32;
        let _ = self.ctx.clear_kv_cache_seq(Some(index as u32), None, None);
        self.slots[index] = Some(Slot {
            tag,
            seq,
            deadline: req.deadline,
            stop: req.stop,
            // max_tokens is clamped to the context left after the prompt.
            max_new: req.max_tokens.min(self.n_ctx_seq - prompt_tokens),
            prompt,
            prefilled: 0,
            pos: 0,
            sampler: TokenSampler::new(req.temperature, req.top_p),
            pending: None,
            logits_at: None,
            out: Vec::new(),
            completion: 0,
            first_token_at: None,
            started_at,
        });
        Ok(())
    }

    /// One decode step over every active sequence; returns the generations that finished.
    pub fn step(&mut self) -> Vec<(T, Result<Generation, BackendError>)> {
        let mut done = Vec::new();
        let now = Instant::now();
        let margin = Duration::from_secs_f64((self.secs_per_step * 2.0).min(1.0));

        // Sequences whose deadline would pass during this step stop now, with what they have.
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|s| now + margin >= s.deadline) {
                let slot = self.slots[i].take().expect("checked");
                done.push(self.finish(slot, FinishReason::Length, true));
            }
        }

        self.batch.clear();
        // Generating sequences first: one token each, so generation never starves behind prompts.
        for slot in self.slots.iter_mut().flatten() {
            slot.logits_at = None;
            if let Some(token) = slot.pending.take() {
                let at = self.batch.n_tokens();
                if self.batch.add(token, slot.pos, &[slot.seq], true).is_ok() {
                    slot.logits_at = Some(at);
                    slot.pos += 1;
                }
            }
        }
        // Then as much prompt as fits.
        for slot in self.slots.iter_mut().flatten() {
            while slot.prefilled < slot.prompt.len() && (self.batch.n_tokens() as usize) < self.n_batch {
                let last = slot.prefilled == slot.prompt.len() - 1;
                let at = self.batch.n_tokens();
                if self.batch.add(slot.prompt[slot.prefilled], slot.pos, &[slot.seq], last).is_err() {
                    break;
                }
                if last {
                    slot.logits_at = Some(at);
                }
                slot.prefilled += 1;
                slot.pos += 1;
            }
        }
        if self.batch.n_tokens() == 0 {
            return done;
        }

        let started = Instant::now();
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            // The whole batch failed: every sequence in it gets the error and leaves.
            for i in 0..self.slots.len() {
                if let Some(slot) = self.slots[i].take() {
                    let _ = self.ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                    done.push((slot.tag, Err(BackendError::Inference(format!("decode: {e}")))));
                }
            }
            return done;
        }

        let vocab = self.model.vocab();
        for i in 0..self.slots.len() {
            let Some(slot) = self.slots[i].as_mut() else { continue };
            let Some(at) = slot.logits_at else { continue };
            let token = LlamaToken::new(slot.sampler.sample(self.ctx.get_logits_ith(at)) as i32);
            let now = Instant::now();
            slot.first_token_at.get_or_insert(now);
            let finish = if vocab.is_eog(token) {
                Some(FinishReason::Stop)
            } else {
                slot.out.extend_from_slice(&vocab.token_to_piece(token, false, None));
                slot.completion += 1;
                if let Some(cut_at) = stop_string_end(&slot.out, &slot.stop) {
                    slot.out.truncate(cut_at);
                    Some(FinishReason::Stop)
                } else if slot.completion >= slot.max_new {
                    Some(FinishReason::Length)
                } else {
                    slot.pending = Some(token);
                    None
                }
            };
            if let Some(reason) = finish {
                let slot = self.slots[i].take().expect("present");
                done.push(self.finish(slot, reason, false));
            }
        }
        let dt = started.elapsed().as_secs_f64();
        self.secs_per_step = if self.secs_per_step == 0.0 { dt } else { 0.8 * self.secs_per_step + 0.2 * dt };
        done
    }

    fn finish(
        &mut self,
        slot: Slot<T>,
        finish: FinishReason,
        cut_by_deadline: bool,
    ) -> (T, Result<Generation, BackendError>) {
        let _ = self.ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
        let text = String::from_utf8_lossy(&slot.out).into_owned();
        let (text, tool_calls) = extract_tool_calls(&text);
        let finish_reason =
            if !tool_calls.is_empty() && finish == FinishReason::Stop { FinishReason::ToolCalls } else { finish };
        let generation = Generation {
            text,
            tool_calls,
            finish_reason,
            prompt_tokens: slot.prompt.len() as u32,
            completion_tokens: slot.completion,
            first_token_at: slot.first_token_at,
            started_at: slot.started_at,
            finished_at: Instant::now(),
            cut_by_deadline,
        };
        (slot.tag, Ok(generation))
    }
}

/// The validator's sampling settings as llama.cpp's own chain: nucleus then temperature then a
/// random draw; greedy only when temperature is 0. The engine samples with [`TokenSampler`] (same
/// result, without sorting the vocabulary); this chain stays as the reference benchmarks compare to.
pub fn sampler_for(temperature: f32, top_p: f32) -> LlamaSampler {
    if temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let top_p = if top_p > 0.0 && top_p < 1.0 { top_p } else { 1.0 };
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
        out[from..].windows(s.len()).position(|w| w == s.as_bytes()).map(|p| from + p)
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
