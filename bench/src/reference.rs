//! llama.cpp called directly, without the miner: the references the engine benchmarks print next
//! to their figures. `batched` is a Rust port of `../shared/gpu/batched.c` (N sequences in one
//! context, argmax sampling, the same model and library), so that the miner's batching is measured
//! against llama.cpp's own in the same run, on the same device.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use loosh_actors::inference::embedded::{backend, load_model, sampler_for, EmbeddedSpec};

/// Where a benchmark runs: `cpu` or `gpuN`, as the `WORKERS` list spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchDevice(pub Option<usize>);

impl std::str::FromStr for BenchDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(BenchDevice(None));
        }
        t.strip_prefix("gpu")
            .and_then(|n| n.parse().ok())
            .map(|n| BenchDevice(Some(n)))
            .ok_or_else(|| format!("{s:?}: the device is cpu or gpuN (gpu0, gpu1, ...)"))
    }
}

impl std::fmt::Display for BenchDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("cpu"),
            Some(n) => write!(f, "gpu{n}"),
        }
    }
}

impl BenchDevice {
    /// One embedded worker of `WORKERS`, on this device.
    pub fn worker_json(
        &self,
        name: &str,
        model: &Path,
        threads: i32,
        n_parallel: u32,
        prefix_cache: bool,
    ) -> serde_json::Value {
        serde_json::json!({"kind": "embedded", "name": name, "device": self.to_string(), "model": model,
            "threads": threads, "n_parallel": n_parallel, "prefix_cache": prefix_cache})
    }

    /// The spec the miner's worker would get, for loading the same model the same way.
    pub fn spec(&self, model: &Path, threads: i32) -> EmbeddedSpec {
        EmbeddedSpec {
            model_path: model.to_path_buf(),
            n_ctx: 2048,
            threads,
            gpu_layers: if self.0.is_some() { 999 } else { 0 },
            gpu_device: self.0,
            n_batch: 512,
            n_parallel: 1,
            prefix_cache: false,
            stall_after: loosh_actors::settings::DEFAULT_STALL_AFTER,
        }
    }
}

/// Loads the model for a direct reference (on this thread, which must also drop it).
pub fn load(spec: &EmbeddedSpec) -> anyhow::Result<LlamaModel> {
    Ok(load_model(spec)?)
}

fn argmax(logits: &[f32]) -> LlamaToken {
    let best = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    LlamaToken(best.0 as i32)
}

/// How the direct single-sequence reference picks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectSampler {
    /// The highest logit (nearly free): llama.cpp's ceiling.
    Argmax,
    /// The validator's top_p 0.95 / temperature 0.7 with llama.cpp's samplers, as the miner did before.
    Validator,
}

/// One generation with llama.cpp called directly: (time to first token, completion tokens, total).
pub fn generate(
    model: &LlamaModel,
    ctx: &mut LlamaContext,
    prompt: &str,
    max_tokens: u32,
    sampler: DirectSampler,
) -> anyhow::Result<(Duration, u32, Duration)> {
    let start = Instant::now();
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), true);
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(tokens.len().max(512), 1);
    for (i, t) in tokens.iter().enumerate() {
        batch.add(*t, i as i32, &[0], i == tokens.len() - 1)?;
    }
    ctx.decode(&mut batch)?;
    let mut chain = sampler_for(0.7, 0.95);
    let mut idx = batch.n_tokens() - 1;
    let mut pos = tokens.len() as i32;
    let mut ttft = None;
    let mut n = 0;
    let mut text = Vec::new();
    while n < max_tokens {
        let token = match sampler {
            DirectSampler::Argmax => argmax(ctx.get_logits_ith(idx)),
            DirectSampler::Validator => chain.sample(ctx, idx),
        };
        ttft.get_or_insert_with(|| start.elapsed());
        if vocab.is_eog(token) {
            break;
        }
        vocab.token_to_piece_into(token, &mut text, false, None);
        n += 1;
        batch.clear();
        batch.add(token, pos, &[0], true)?;
        pos += 1;
        ctx.decode(&mut batch)?;
        idx = 0;
    }
    Ok((ttft.unwrap_or_default(), n, start.elapsed()))
}

/// llama.cpp's own batched decoding, as `batched.c` does it: `n_seq` sequences of 64 prompt tokens
/// prefilled in one batch, then `n_gen` steps of one argmax token per sequence. Returns (tokens/s
/// over the generation steps, milliseconds per step, tokens/s with the prefill's time counted
/// too: the miner's figure includes its challenges' prompts, which on a CPU cost real work).
pub fn batched(spec: &EmbeddedSpec, n_seq: u32, n_gen: u32) -> anyhow::Result<(f64, f64, f64)> {
    const N_PROMPT: i32 = 64;
    let model = load(spec)?;
    let n_seq = n_seq.max(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_seq * (N_PROMPT as u32 + n_gen + 16)))
        .with_n_batch(4096)
        .with_n_ubatch(512)
        .with_n_seq_max(n_seq)
        .with_n_threads(spec.threads)
        .with_n_threads_batch(spec.threads);
    let mut ctx = model.new_context(backend()?, params)?;
    let mut batch = LlamaBatch::new(4096, 1);
    for s in 0..n_seq as i32 {
        for i in 0..N_PROMPT {
            batch.add(LlamaToken(100 + i), i, &[s], i == N_PROMPT - 1)?;
        }
    }
    let prefill_started = Instant::now();
    ctx.decode(&mut batch)?;
    ctx.synchronize();
    let prefill = prefill_started.elapsed().as_secs_f64();
    let mut at: Vec<i32> = (0..n_seq as i32).map(|s| s * N_PROMPT + N_PROMPT - 1).collect();
    let start = Instant::now();
    for step in 0..n_gen as i32 {
        let tokens: Vec<LlamaToken> = at.iter().map(|&i| argmax(ctx.get_logits_ith(i))).collect();
        batch.clear();
        for (s, token) in tokens.into_iter().enumerate() {
            batch.add(token, N_PROMPT + step, &[s as i32], true)?;
        }
        ctx.decode(&mut batch)?;
        at = (0..n_seq as i32).collect();
    }
    ctx.synchronize();
    let secs = start.elapsed().as_secs_f64();
    let tokens = f64::from(n_seq * n_gen);
    Ok((tokens / secs, secs * 1e3 / f64::from(n_gen.max(1)), tokens / (secs + prefill)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_cpu_or_a_numbered_gpu() {
        assert_eq!("cpu".parse::<BenchDevice>(), Ok(BenchDevice(None)));
        assert_eq!("GPU1".parse::<BenchDevice>(), Ok(BenchDevice(Some(1))));
        assert_eq!(BenchDevice(Some(0)).to_string(), "gpu0");
        assert!("gpu".parse::<BenchDevice>().unwrap_err().contains("cpu or gpuN"));
        assert!("cuda:0".parse::<BenchDevice>().is_err());
    }

    #[test]
    fn argmax_picks_the_highest_logit() {
        assert_eq!(argmax(&[0.1, 3.0, -2.0, 2.9]), LlamaToken(1));
    }
}
