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
use super::grammar::ToolGrammar;
use super::request::{BackendError, FinishReason, Generation, GenerationRequest, JobControl};
use super::sampler::TokenSampler;
use super::stop::StopMatcher;
use super::tool_calls::extract_tool_calls;
use super::tool_choice::ToolChoice;

/// How one embedded engine is set up (one per worker / device). Serialisable: it is the first
/// frame an engine child process gets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// 0 = automatic: on a GPU as many as its free memory holds next to the model (see
    /// [`auto_parallel`]), on a CPU [`CPU_DEFAULT_PARALLEL`].
    pub n_parallel: u32,
    /// Reuse the KV of a prompt prefix already in the cache (validators repeat their system
    /// prompts) instead of prefilling it again.
    pub prefix_cache: bool,
    /// A step (admission with its prefill, then one decode) running longer than this while work is
    /// in flight means the engine hung: its worker fails and restarts. Far beyond any sane step.
    pub stall_after: Duration,
}

/// The default of [`EmbeddedSpec::stall_after`] (`ENGINE_STALL_SECONDS`).
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);

/// Sequences per CPU worker when `n_parallel` is automatic: a CPU's matrix work grows with the
/// batch, so more than a few sequences stop paying.
pub const CPU_DEFAULT_PARALLEL: u32 = 4;

/// A new sequence waits for a live one to prefill a shared prefix only when that saves at least
/// this many tokens: for less, the step it waits costs more than the prefill.
const MIN_SHARED_WAIT: usize = 16;

/// At most this many sequences per context when sized automatically: llama.cpp's own batched
/// decoding gains little beyond it, and each sequence's logits cost a host copy per step.
const MAX_AUTO_PARALLEL: u32 = 64;

/// What a loaded engine reports about itself (an engine child sends it back once loaded).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    pub description: String,
    /// Context per sequence.
    pub n_ctx: u32,
    pub n_parallel: usize,
    pub native_tools: bool,
    /// How `n_parallel` was chosen (given, or sized from the GPU's free memory), for the log.
    pub sizing: String,
}

/// Where one engine's time went, accumulated since it started: what `/metrics` and the benchmarks
/// show so that the bottleneck (the GPU's decode, the CPU's sampling, or our own bookkeeping) is
/// visible without a profiler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepStats {
    pub steps: u64,
    /// llama.cpp's decode, until its results are on the host.
    pub decode: Duration,
    /// Drawing the next token of every sequence from its logits.
    pub sampling: Duration,
    /// Everything else in a step: admission (template, tokenising, prefix lookup), batch
    /// building, detokenising, stop checks.
    pub rest: Duration,
    /// Completion tokens sampled.
    pub tokens: u64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: u64,
    /// Prompt tokens taken from the cache instead of being prefilled.
    pub reused_prompt_tokens: u64,
}

impl StepStats {
    /// What accumulated since `before` (counters only grow).
    pub fn since(&self, before: &StepStats) -> StepStats {
        StepStats {
            steps: self.steps - before.steps,
            decode: self.decode.saturating_sub(before.decode),
            sampling: self.sampling.saturating_sub(before.sampling),
            rest: self.rest.saturating_sub(before.rest),
            tokens: self.tokens - before.tokens,
            prompt_tokens: self.prompt_tokens - before.prompt_tokens,
            reused_prompt_tokens: self.reused_prompt_tokens - before.reused_prompt_tokens,
        }
    }

    /// One line for the benchmarks: per-step milliseconds by phase and tokens/s of busy time.
    pub fn summary(&self) -> String {
        let steps = self.steps.max(1) as f64;
        let busy = (self.decode + self.sampling + self.rest).as_secs_f64();
        format!(
            "{} steps: decode {:.2} ms, sampling {:.2} ms, rest {:.2} ms per step; {:.1} tok/s busy; prompt {} prefilled, {} reused",
            self.steps,
            self.decode.as_secs_f64() * 1e3 / steps,
            self.sampling.as_secs_f64() * 1e3 / steps,
            self.rest.as_secs_f64() * 1e3 / steps,
            if busy > 0.0 { self.tokens as f64 / busy } else { 0.0 },
            self.prompt_tokens,
            self.reused_prompt_tokens
        )
    }
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
    /// The request's stop strings, compiled; matched against each token's new bytes only.
    stop: StopMatcher,
    max_new: u32,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already decoded (prefill progress).
    prefilled: usize,
    /// Next KV position of this sequence.
    pos: i32,
    sampler: TokenSampler,
    /// When `tool_choice` forces a call: the grammar every token is drawn within.
    grammar: Option<ToolGrammar>,
    /// Whether `<tool_call>` blocks become tool calls (not with `tool_choice: "none"`).
    extract_calls: bool,
    /// The token sampled last step, to be decoded this step.
    pending: Option<LlamaToken>,
    /// Where this sequence's logits sit in the batch just decoded.
    logits_at: Option<i32>,
    /// Waiting for a sequence admitted before it, whose prompt starts the same way, to prefill
    /// that shared prefix, which this one then shares instead of prefilling it again (a burst of
    /// challenges from one validator carries one system prompt).
    waiting: bool,
    out: Vec<u8>,
    completion: u32,
    first_token_at: Option<Instant>,
    started_at: Instant,
    /// The scheduler's signals for this attempt (first token out, cancel in).
    control: JobControl,
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
    /// The tokens whose KV each sequence holds (positions 0..len), live or left by a finished
    /// generation: what a new prompt's prefix is matched against.
    cached: Vec<Vec<LlamaToken>>,
    prefix_cache: bool,
    /// Sample the sequences of a step in parallel; see [`Self::sample_all`].
    parallel_sampling: bool,
    sizing: String,
    /// Smoothed seconds per decode step, to stop one step before a deadline rather than after.
    secs_per_step: f64,
    stats: StepStats,
    /// Bytes of this model's longest token (special tokens as text): no prompt of more than
    /// `n_ctx_seq` times this many bytes can fit a sequence's context.
    max_token_bytes: u64,
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

/// Bytes of the model's longest token as text (special tokens included, as the tokenizer parses
/// them in a prompt). Once per engine: a walk over the vocabulary, milliseconds.
pub fn longest_token_bytes(model: &LlamaModel) -> u64 {
    let vocab = model.vocab();
    let mut piece = Vec::new();
    let longest = vocab
        .tokens()
        .map(|t| {
            piece.clear();
            vocab.token_to_piece_into(t, &mut piece, true, None);
            piece.len()
        })
        .max()
        .unwrap_or(1);
    longest.max(1) as u64
}

/// Bytes of text a request's prompt holds at least, without rendering it: its messages' text and
/// tool calls. The template only adds to them, so a prompt whose text alone cannot fit is refused
/// soundly.
fn prompt_text_bytes(req: &GenerationRequest) -> u64 {
    req.messages
        .iter()
        .map(|m| {
            let text = match &m.content {
                Some(serde_json::Value::String(s)) => s.len(),
                Some(serde_json::Value::Array(parts)) => {
                    parts.iter().filter_map(|p| p.get("text").and_then(serde_json::Value::as_str)).map(str::len).sum()
                }
                _ => 0,
            };
            text as u64
        })
        .sum()
}

/// KV cache bytes one token costs in this model (K and V, f16, every layer).
pub fn kv_bytes_per_token(model: &LlamaModel) -> u64 {
    let head_dim = u64::from(model.n_embd().max(1) as u32) / u64::from(model.n_head().max(1));
    2 * u64::from(model.n_layer()) * head_dim * u64::from(model.n_head_kv().max(1)) * 2
}

/// Free memory of the GPU this engine's layers are on, when it has one.
fn gpu_free_bytes(spec: &EmbeddedSpec) -> Option<u64> {
    if spec.gpu_layers == 0 {
        return None;
    }
    let devices = llama_cpp_2::list_llama_ggml_backend_devices();
    let mut gpus = devices.iter().filter(|d| d.backend.eq_ignore_ascii_case("CUDA"));
    let device = match spec.gpu_device {
        Some(index) => devices.iter().find(|d| d.index == index),
        None => gpus.next(),
    }?;
    Some(device.memory_free as u64)
}

/// Sequences that fit in `free` bytes of GPU memory (read after the model's weights are loaded)
/// at `kv_per_token` bytes per token and `n_ctx_seq` tokens each, keeping room for llama.cpp's
/// compute buffers (which grow with the batch) and the other processes on the card.
pub fn auto_parallel(free: u64, kv_per_token: u64, n_ctx_seq: u32) -> u32 {
    const GIB: u64 = 1 << 30;
    let budget = (free / 10 * 9).saturating_sub(2 * GIB);
    let per_seq = kv_per_token.max(1) * u64::from(n_ctx_seq.max(1));
    (budget / per_seq).clamp(1, u64::from(MAX_AUTO_PARALLEL)) as u32
}

/// `n_parallel` for this spec, and a sentence saying why, for the start-up log.
fn choose_parallel(model: &LlamaModel, spec: &EmbeddedSpec, n_ctx_seq: u32) -> (u32, String) {
    if spec.n_parallel > 0 {
        return (spec.n_parallel, format!("{} sequences as configured", spec.n_parallel));
    }
    let kv = kv_bytes_per_token(model);
    match gpu_free_bytes(spec) {
        Some(free) => {
            let n = auto_parallel(free, kv, n_ctx_seq);
            let mib = |b: u64| b / (1024 * 1024);
            (
                n,
                format!(
                    "{n} sequences from the GPU's memory: {} MiB free after the model ({} MiB), KV {} KiB per token x {n_ctx_seq} tokens per sequence",
                    mib(free),
                    mib(model.size()),
                    kv / 1024
                ),
            )
        }
        None => (CPU_DEFAULT_PARALLEL, format!("{CPU_DEFAULT_PARALLEL} sequences (CPU default)")),
    }
}

impl<'m, T> EmbeddedEngine<'m, T> {
    /// Makes the context (`n_ctx` per sequence × `n_parallel`) and compiles the chat template.
    pub fn new(model: &'m LlamaModel, spec: &EmbeddedSpec) -> Result<Self, BackendError> {
        let n_ctx_seq = if spec.n_ctx == 0 { model.n_ctx_train() } else { spec.n_ctx.min(model.n_ctx_train().max(1)) };
        let (n_parallel, sizing) = choose_parallel(model, spec, n_ctx_seq);
        let n_batch = spec.n_batch.max(n_parallel).clamp(32, 8192);
        let threads = spec.threads.max(1);
        // A unified KV cache lets sequences share cells, so that a reused prompt prefix costs no
        // copy (llama.cpp's per-sequence streams can only copy a whole stream).
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx_seq * n_parallel))
            .with_n_seq_max(n_parallel)
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_kv_unified(spec.prefix_cache)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model.new_context(backend()?, params).map_err(|e| {
            BackendError::ModelLoad(format!("context of {n_ctx_seq} tokens x {n_parallel} sequences: {e}"))
        })?;
        // llama.cpp pads the context; each sequence gets an equal share of what it made.
        let n_ctx_seq = ctx.n_ctx() / n_parallel;
        let template = model_template(model)?;
        let max_token_bytes = longest_token_bytes(model);
        let slots = (0..n_parallel).map(|_| None).collect();
        Ok(Self {
            model,
            ctx,
            template,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            n_ctx_seq,
            slots,
            cached: vec![Vec::new(); n_parallel as usize],
            prefix_cache: spec.prefix_cache,
            parallel_sampling: spec.gpu_layers > 0,
            secs_per_step: 0.0,
            stats: StepStats::default(),
            sizing,
            max_token_bytes,
        })
    }

    /// Where this engine's time has gone so far.
    pub fn stats(&self) -> StepStats {
        self.stats
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            description: format!("{} params, {} layers", self.model.n_params(), self.model.n_layer()),
            n_ctx: self.n_ctx_seq,
            n_parallel: self.slots.len(),
            native_tools: self.template.has_native_tools(),
            sizing: self.sizing.clone(),
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
    /// cannot run: a `tool_choice` it cannot honour, template error, or a prompt that does not fit
    /// the sequence's context. The caller checks [`Self::has_free_slot`] first.
    ///
    /// `tool_choice` (see [`ToolChoice`]): `"none"` leaves the tools out of the prompt and the
    /// answer's `<tool_call>` blocks in its text; a forced call draws every token within a
    /// grammar of one Hermes tool call ([`ToolGrammar`]).
    pub fn admit(&mut self, req: GenerationRequest, tag: T) -> Result<(), (T, BackendError)> {
        let started_at = Instant::now();
        if !self.has_free_slot() {
            return Err((tag, BackendError::Inference("no free sequence".into())));
        }
        // A prompt that cannot fit even at the longest token is refused by its byte length: the
        // template and the tokenizer would otherwise spend time proportional to it on this thread,
        // which every other sequence of the worker waits for.
        let bytes = prompt_text_bytes(&req);
        let max_bytes = u64::from(self.n_ctx_seq) * self.max_token_bytes;
        if bytes > max_bytes {
            return Err((tag, BackendError::PromptTooLarge { bytes, max_bytes, n_ctx: self.n_ctx_seq }));
        }
        let choice = match ToolChoice::parse(req.tool_choice.as_ref(), req.tools.as_deref()) {
            Ok(choice) => choice,
            Err(e) => return Err((tag, BackendError::ToolChoice(e.to_string()))),
        };
        let tools = req.tools.as_deref().filter(|_| choice.offers_tools());
        let prompt = match self.template.render(&req.messages, tools) {
            Ok(p) => tokenize_prompt(self.model, &p),
            Err(e) => return Err((tag, BackendError::Template(e.to_string()))),
        };
        let prompt_tokens = prompt.len() as u32;
        if prompt_tokens == 0 || prompt_tokens >= self.n_ctx_seq {
            return Err((tag, BackendError::PromptTooLong { prompt_tokens, n_ctx: self.n_ctx_seq }));
        }
        let grammar = match choice.forced() {
            Some(names) => match ToolGrammar::new(self.model, &names) {
                Ok(grammar) => Some(grammar),
                Err(e) => return Err((tag, e)),
            },
            None => None,
        };
        let (index, reused) = self.place(&prompt);
        self.stats.reused_prompt_tokens += reused as u64;
        // A live sequence still prefilling a longer common prefix than the cache holds: wait for
        // it rather than prefill the same tokens twice in parallel.
        let waiting = self.prefix_cache && self.live_prefix(&prompt, index) >= reused + MIN_SHARED_WAIT;
        let seq = index as i32;
        self.slots[index] = Some(Slot {
            tag,
            seq,
            deadline: req.deadline,
            stop: StopMatcher::new(&req.stop),
            // max_tokens is clamped to the context left after the prompt.
            max_new: req.max_tokens.min(self.n_ctx_seq - prompt_tokens),
            prompt,
            prefilled: reused,
            pos: reused as i32,
            sampler: TokenSampler::new(req.temperature, req.top_p),
            grammar,
            extract_calls: choice.extracts_calls(),
            pending: None,
            logits_at: None,
            waiting,
            out: Vec::new(),
            completion: 0,
            first_token_at: None,
            started_at,
            control: req.control,
        });
        self.stats.rest += started_at.elapsed();
        Ok(())
    }

    /// Picks a free sequence for `prompt` and fills its KV with the longest prefix of `prompt`
    /// that some sequence already holds; returns (sequence, tokens reused). A free sequence that
    /// holds the prefix itself is preferred (nothing to copy); otherwise the prefix's cells are
    /// shared from the sequence that has them, live or finished. At least the prompt's last
    /// token is always decoded again, for its logits.
    fn place(&mut self, prompt: &[LlamaToken]) -> (usize, usize) {
        let common = |held: &[LlamaToken]| held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let free = (0..self.slots.len()).filter(|&i| self.slots[i].is_none());
        // Among free sequences: the one whose own cache matches most, else the one holding least.
        let index = free
            .max_by_key(|&i| (common(&self.cached[i]), std::cmp::Reverse(self.cached[i].len())))
            .expect("the caller checked for a free sequence");
        let limit = prompt.len() - 1;
        let own = if self.prefix_cache { common(&self.cached[index]).min(limit) } else { 0 };
        let (source, best) = if self.prefix_cache {
            (0..self.cached.len())
                .map(|i| (i, common(&self.cached[i]).min(limit)))
                .max_by_key(|&(i, n)| (n, i == index))
                .unwrap_or((index, 0))
        } else {
            (index, 0)
        };
        let seq = index as u32;
        if source == index || best <= own {
            // Keep what this sequence already holds of the prompt; drop the rest.
            let _ = self.ctx.clear_kv_cache_seq(Some(seq), Some(own as u32), None);
            self.cached[index].truncate(own);
            return (index, own);
        }
        let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
        // Same KV stream (unified cache): the cells become shared, no data moves.
        let _ = self.ctx.copy_kv_cache_seq(source as i32, seq as i32, Some(0), Some(best as u32));
        let shared = self.cached[source][..best].to_vec();
        self.cached[index] = shared;
        (index, best)
    }

    /// The longest prefix of `prompt` (at most all but its last token) that a live sequence other
    /// than `except` will hold once its own prefill is done (waiting sequences excluded: they wait
    /// on another, and chains of waits would only delay).
    fn live_prefix(&self, prompt: &[LlamaToken], except: usize) -> usize {
        let limit = prompt.len().saturating_sub(1);
        self.slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != except)
            .filter_map(|(_, s)| s.as_ref())
            .filter(|s| !s.waiting && s.prefilled < s.prompt.len())
            .map(|s| s.prompt.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(limit))
            .max()
            .unwrap_or(0)
    }

    /// Starts the waiting sequences whose shared prefix is now in the cache (or whose source went
    /// away): each takes the longest prefix any sequence holds, as at admission.
    fn resume_waiting(&mut self) {
        for i in 0..self.slots.len() {
            let Some(slot) = self.slots[i].as_ref() else { continue };
            if !slot.waiting {
                continue;
            }
            let prompt = slot.prompt.clone();
            let limit = prompt.len() - 1;
            let common = |held: &[LlamaToken]| held.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(limit);
            let cached = (0..self.cached.len())
                .filter(|&j| j != i)
                .map(|j| (j, common(&self.cached[j])))
                .max_by_key(|&(_, n)| n);
            let (source, best) = cached.unwrap_or((i, 0));
            if self.live_prefix(&prompt, i) > best {
                continue;
            }
            let own = common(&self.cached[i]);
            let seq = i as u32;
            let reused = if best > own {
                let _ = self.ctx.clear_kv_cache_seq(Some(seq), None, None);
                let _ = self.ctx.copy_kv_cache_seq(source as i32, seq as i32, Some(0), Some(best as u32));
                self.cached[i] = self.cached[source][..best].to_vec();
                best
            } else {
                own
            };
            // What admission counted as reused stays; the extra now shared is added.
            let slot = self.slots[i].as_mut().expect("checked");
            self.stats.reused_prompt_tokens += (reused - slot.prefilled.min(reused)) as u64;
            slot.prefilled = reused;
            slot.pos = reused as i32;
            slot.waiting = false;
        }
    }

    /// One decode step over every active sequence; returns the generations that finished.
    pub fn step(&mut self) -> Vec<(T, Result<Generation, BackendError>)> {
        let step_started = Instant::now();
        let (decode_before, sampling_before) = (self.stats.decode, self.stats.sampling);
        let done = self.step_inner();
        if !done.is_empty() || self.stats.decode > decode_before {
            let spent = step_started.elapsed();
            let measured = (self.stats.decode - decode_before) + (self.stats.sampling - sampling_before);
            self.stats.rest += spent.saturating_sub(measured);
        }
        done
    }

    fn step_inner(&mut self) -> Vec<(T, Result<Generation, BackendError>)> {
        let mut done = Vec::new();
        let now = Instant::now();
        let margin = Duration::from_secs_f64((self.secs_per_step * 2.0).min(1.0));

        // Sequences whose deadline would pass during this step stop now, with what they have;
        // cancelled ones (a hedge lost the race) stop too, freeing their sequence.
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(|s| s.control.is_cancelled()) {
                let slot = self.slots[i].take().expect("checked");
                let (tag, _) = self.finish(slot, FinishReason::Length, false);
                done.push((tag, Err(BackendError::Cancelled)));
            } else if self.slots[i].as_ref().is_some_and(|s| now + margin >= s.deadline) {
                let slot = self.slots[i].take().expect("checked");
                done.push(self.finish(slot, FinishReason::Length, true));
            }
        }

        if self.prefix_cache {
            self.resume_waiting();
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
                    self.cached[slot.seq as usize].push(token);
                }
            }
        }
        // Then as much prompt as fits.
        for slot in self.slots.iter_mut().flatten().filter(|s| !s.waiting) {
            while slot.prefilled < slot.prompt.len() && (self.batch.n_tokens() as usize) < self.n_batch {
                let last = slot.prefilled == slot.prompt.len() - 1;
                let at = self.batch.n_tokens();
                if self.batch.add(slot.prompt[slot.prefilled], slot.pos, &[slot.seq], last).is_err() {
                    break;
                }
                if last {
                    slot.logits_at = Some(at);
                }
                self.cached[slot.seq as usize].push(slot.prompt[slot.prefilled]);
                self.stats.prompt_tokens += 1;
                slot.prefilled += 1;
                slot.pos += 1;
            }
        }
        if self.batch.n_tokens() == 0 {
            return done;
        }

        let started = Instant::now();
        let decoded = self.ctx.decode(&mut self.batch);
        // A GPU decodes asynchronously: wait for it here so that its time counts as decode, not
        // as the sampling that would otherwise wait for it.
        self.ctx.synchronize();
        self.stats.decode += started.elapsed();
        self.stats.steps += 1;
        if let Err(e) = decoded {
            // The whole batch failed: every sequence in it gets the error and leaves.
            for i in 0..self.slots.len() {
                if let Some(slot) = self.slots[i].take() {
                    done.push((slot.tag, Err(BackendError::Inference(format!("decode: {e}")))));
                }
            }
            self.ctx.clear_kv_cache();
            self.cached.iter_mut().for_each(Vec::clear);
            return done;
        }

        let sampling = Instant::now();
        let sampled = self.sample_all();
        let now = Instant::now();
        self.stats.sampling += now - sampling;
        self.stats.tokens += sampled.len() as u64;

        let vocab = self.model.vocab();
        for (i, token) in sampled {
            let Some(slot) = self.slots[i].as_mut() else { continue };
            // A forced call whose grammar no token of the vocabulary can continue ends here, with
            // what it has (no vocabulary llama.cpp loads lacks the bytes the grammar needs).
            let Some(token) = token else {
                let slot = self.slots[i].take().expect("present");
                done.push(self.finish(slot, FinishReason::Stop, false));
                continue;
            };
            if slot.first_token_at.is_none() {
                slot.first_token_at = Some(now);
                slot.control.first_token();
            }
            let finish = if vocab.is_eog(token) {
                Some(FinishReason::Stop)
            } else {
                if let Some(grammar) = slot.grammar.as_mut() {
                    grammar.accept(token);
                }
                vocab.token_to_piece_into(token, &mut slot.out, false, None);
                slot.completion += 1;
                if let Some(cut_at) = slot.stop.feed(&slot.out) {
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

    /// Samples the next token of every sequence that has logits this step, as (slot, token); a
    /// sequence forced to call a tool draws within its grammar, and gets `None` when the grammar
    /// allows no token.
    ///
    /// On a GPU engine the sequences are sampled in parallel: the CPU cores idle while the GPU
    /// decodes, and sampling them one after another would make the next decode wait for the sum
    /// (16 sequences x ~0.1 ms at a 152k vocabulary). On a CPU engine llama.cpp's own threads are
    /// still spinning right after a decode, so the sequences are sampled in order on this thread.
    fn sample_all(&mut self) -> Vec<(usize, Option<LlamaToken>)> {
        type Job<'a> = (usize, &'a mut TokenSampler, Option<&'a mut ToolGrammar>, &'a [f32]);
        let ctx = &self.ctx;
        let jobs: Vec<Job<'_>> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| {
                let slot = slot.as_mut()?;
                let at = slot.logits_at?;
                Some((i, &mut slot.sampler, slot.grammar.as_mut(), ctx.get_logits_ith(at)))
            })
            .collect();
        let draw = |(i, sampler, grammar, logits): Job<'_>| match grammar {
            Some(grammar) => (i, grammar.draw(sampler, logits)),
            None => (i, Some(LlamaToken::new(sampler.sample(logits) as i32))),
        };
        if self.parallel_sampling && jobs.len() > 1 {
            use rayon::prelude::*;
            jobs.into_par_iter().map(draw).collect()
        } else {
            jobs.into_iter().map(draw).collect()
        }
    }

    /// Samples a step's sequences in parallel (the default on GPU engines) or in order.
    pub fn set_parallel_sampling(&mut self, on: bool) {
        self.parallel_sampling = on;
    }

    fn finish(
        &mut self,
        slot: Slot<T>,
        finish: FinishReason,
        cut_by_deadline: bool,
    ) -> (T, Result<Generation, BackendError>) {
        let seq = slot.seq as u32;
        // With the prefix cache the prompt's KV stays: the next prompt that starts the same way
        // (the validator's system prompt) picks it up in `place`. The completion's goes: no
        // prompt starts with another challenge's answer, and cells kept for nothing widen every
        // step's attention over the unified cache.
        let keep = if self.prefix_cache { slot.prefilled.min(slot.prompt.len()) } else { 0 };
        let _ = self.ctx.clear_kv_cache_seq(Some(seq), Some(keep as u32), None);
        self.cached[seq as usize].truncate(keep);
        let text = String::from_utf8_lossy(&slot.out).into_owned();
        let (text, tool_calls) =
            if slot.extract_calls { extract_tool_calls(&text) } else { (text.trim().to_string(), Vec::new()) };
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
            worker: String::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_sizing_fills_the_free_memory_left_after_the_model_with_whole_sequences() {
        const GIB: u64 = 1 << 30;
        // Llama-3-8B: 128 KiB of KV per token, so 8,192 tokens per sequence take 1 GiB.
        let kv = 128 * 1024;
        // 20 GiB free: 90 % minus 2 GiB for compute buffers leaves 16 sequences.
        assert_eq!(auto_parallel(20 * GIB, kv, 8192), 16);
        // Shorter contexts fit more sequences; a huge card stops at the cap.
        assert_eq!(auto_parallel(20 * GIB, kv, 4096), 32);
        assert_eq!(auto_parallel(130 * GIB, kv, 8192), MAX_AUTO_PARALLEL);
        // A card with no room still runs one sequence (llama.cpp reports if even that fails).
        assert_eq!(auto_parallel(GIB, kv, 8192), 1);
    }
}
