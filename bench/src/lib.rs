//! `loosh-bench`: the miner measured against a reference in the same run.
//!
//! A crate of its own: the benchmarks start the node as `loosh-miner` does (`loosh_miner::node`,
//! configured the way an operator configures it) and then reach it as any client does, through
//! its HTTP port and the engine's front door ([`loosh_actors::front_door::FrontDoor`]); only the
//! references (llama.cpp called directly) and the fault injection of `recovery` and `process`
//! reach past the door, on purpose.
//!
//! - `protocol`: challenge round trips through HTTP + Fernet + actors, with the model generating one
//!   token, against the same generations submitted through the front door without the protocol: the difference is
//!   the miner's own cost.
//! - `sampling`: microseconds per sampled token, llama.cpp's sampler chain against the miner's.
//! - `inference`: tokens/s and time to first token through the miner against a plain llama.cpp
//!   loop on the same GGUF and prompt (argmax, or the validator's sampling), interleaved run by
//!   run; then the first-token time of a challenge whose 2,000-token system prompt is cached.
//! - `batching` and `workers` (in `workers`): one worker's continuous batching against llama.cpp's
//!   own batched decoding, and scaling over workers.
//!
//! - `process` (in `process`): an engine in a child process against one on a thread (tokens/s,
//!   first token), and the time from a child's death to its replacement's first answer.
//! - `attack` (in `attack`): issue 9's attacks on a local miner, with an honest validator's
//!   latency during each against its latency alone; issue 32's (in `attack_bounds`): a stop list
//!   of 300,000 strings (the honest validator's tokens/s during it against alone) and a hostile
//!   OpenAI-compatible backend (the node's peak memory per misbehaviour); issues 29 and 30's (in
//!   `attack_shares`): replay-many, relay and hog, with the honest validator's answered count and
//!   latency against alone.
//! - `answering` (in `answering`): seven validators' mixed load with slot-count admission and no
//!   hedging against time-aware admission and hedging: challenge time, shares answered, refused
//!   and cut; with `test-hooks`, time to first token with a slowed worker, without and with hedging.
//!
//! The engine benchmarks take `--device cpu|gpuN`, `--threads`, `--parallel` and `--inflight`, and
//! print where each step's time went (decode, sampling, the rest).

mod answering;
mod args;
mod attack;
mod attack_bounds;
mod attack_shares;
pub mod hog;
pub mod hostile_backend;
mod inference;
mod load;
mod metagraph;
mod miner;
mod process;
mod protocol;
mod reference;
mod sampling;
mod workers;

use std::time::Duration;

pub use args::Benchmark;

/// Runs one benchmark to its end on a runtime of two threads (what the measured miner gets is the
/// machine's, not the bench's).
pub fn run(benchmark: Benchmark) -> anyhow::Result<()> {
    loosh_miner::logging::init_console("warning");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match benchmark {
        Benchmark::Protocol { model, concurrency, requests, threads } => {
            rt.block_on(protocol::protocol(model, concurrency, requests, threads))
        }
        Benchmark::Workers { model, workers, challenges, inflight, device, threads, parallel } => {
            let engine =
                workers::EngineBench { model, device, threads, inflight, prefix_cache: true, temperature: 0.7 };
            rt.block_on(workers::scaling(engine, workers, challenges, parallel))
        }
        Benchmark::Batching {
            model,
            parallel,
            challenges,
            inflight,
            max_tokens,
            device,
            threads,
            no_reference,
            no_prefix_cache,
            temperature,
        } => {
            let engine =
                workers::EngineBench { model, device, threads, inflight, prefix_cache: !no_prefix_cache, temperature };
            rt.block_on(workers::batching(engine, parallel, challenges, max_tokens, !no_reference))
        }
        Benchmark::Openai { model, requests, max_tokens } => rt.block_on(workers::openai(model, requests, max_tokens)),
        Benchmark::Attack {
            model,
            threads,
            honest,
            replays,
            stalled,
            stall_window,
            malformed,
            concurrency,
            attacks,
            stop_rounds,
            stop_tokens,
            replays_per_address,
            relay_in_flight,
            hog_connections,
        } => rt.block_on(attack::attack(attack::AttackPlan {
            attacks,
            stop_rounds,
            stop_tokens,
            model,
            threads,
            honest,
            replays,
            stalled,
            stall_window: Duration::from_secs(stall_window),
            malformed,
            concurrency,
            replays_per_address,
            relay_in_flight,
            hog_connections,
        })),
        Benchmark::Answering { model, validators, rounds, deadline_ms, short_tokens, parallel, wait_cap_ms } => rt
            .block_on(answering::answering(answering::AnsweringPlan {
                model,
                validators,
                rounds,
                deadline_ms,
                short_tokens,
                parallel,
                wait_cap_ms: wait_cap_ms.unwrap_or(deadline_ms * 2000 / 50_000).max(1),
            })),
        #[cfg(feature = "test-hooks")]
        Benchmark::Recovery { model, runs } => rt.block_on(workers::recovery(model, runs)),
        #[cfg(not(feature = "test-hooks"))]
        Benchmark::Recovery { .. } => {
            anyhow::bail!("bench recovery crashes a worker on purpose: build with `--features test-hooks`")
        }
        Benchmark::Process { model, runs, max_tokens, threads, device, deaths, prompt } => {
            rt.block_on(process::process(process::ProcessBench {
                model,
                device,
                threads,
                runs,
                max_tokens,
                deaths,
                prompt,
            }))
        }
        Benchmark::Metagraph { chain, neurons, runs, netuid } => {
            rt.block_on(metagraph::metagraph(chain, neurons, runs, netuid))
        }
        Benchmark::Sampling { draws } => sampling::sampling(draws),
        Benchmark::Inference { model, runs, max_tokens, threads, device, parallel, inflight, direct, prompt } => {
            let engine =
                workers::EngineBench { model, device, threads, inflight, prefix_cache: true, temperature: 0.7 };
            rt.block_on(inference::inference(engine, parallel, runs, max_tokens, direct, prompt))
        }
    }
}
