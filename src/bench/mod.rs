//! `loosh-miner bench`: the miner measured against a reference in the same run.
//!
//! - `protocol`: challenge round trips through HTTP + Fernet + actors, with the model generating one
//!   token, against the same generations submitted to the actor graph directly: the difference is
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

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use llama_cpp_2::context::params::LlamaContextParams;
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::graph::MinerGraph;
use loosh_actors::inference::chat_template::ChatTemplate;
use loosh_actors::inference::embedded::StepStats;
use loosh_actors::inference::request::GenerationRequest;
use loosh_actors::protocol::messages::ChatMessage;
use loosh_actors::protocol::signature::Hotkey;
use loosh_actors::workers::host::stats::wait_for_engines;
use loosh_actors::workers::worker::WorkerMsg;
use tokio::sync::Mutex;

use crate::client::validator::{challenge_body, ClientError, ValidatorClient};
use crate::config::{Config, Source};
use crate::node::{Node, NodeParts};

mod answering;
mod attack;
mod attack_bounds;
mod attack_shares;
pub mod hog;
pub mod hostile_backend;
mod process;
mod reference;
mod sampling;
mod workers;

use reference::{BenchDevice, DirectSampler};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: BenchKind,
}

#[derive(Subcommand)]
enum BenchKind {
    /// Round trips per second and latency of the protocol path (tiny model, one token).
    Protocol {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Challenges per concurrency level.
        #[arg(long, default_value_t = 400)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        threads: i32,
    },
    /// Throughput of 1, 2, 4 workers on one device on a fixed challenge mix.
    Workers {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
        workers: Vec<usize>,
        #[arg(long, default_value_t = 48)]
        challenges: usize,
        /// Challenges in flight at once.
        #[arg(long, visible_alias = "concurrency", default_value_t = 8)]
        inflight: usize,
        /// cpu or gpuN.
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        /// CPU threads per worker.
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Sequences each worker generates at once.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
    },
    /// One worker generating 1 vs N sequences at once (continuous batching gain), each level
    /// against llama.cpp's own batched decoding of as many sequences.
    Batching {
        #[arg(long)]
        model: PathBuf,
        /// The worker's n_parallel levels.
        #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
        parallel: Vec<u32>,
        #[arg(long, default_value_t = 48)]
        challenges: usize,
        /// Challenges in flight at once.
        #[arg(long, default_value_t = 16)]
        inflight: usize,
        /// Completion tokens per challenge, cycled over the challenges.
        #[arg(long, default_value = "16,64,128", value_delimiter = ',')]
        max_tokens: Vec<u32>,
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Skip llama.cpp's batched reference.
        #[arg(long)]
        no_reference: bool,
        /// Run the worker without prefix reuse (and so without the unified KV cache it needs).
        #[arg(long)]
        no_prefix_cache: bool,
        /// The challenges' temperature; 0 (greedy) shows the engine without the sampler's cost.
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
    },
    /// The openai worker's overhead: miner round trip minus a direct streamed call to the same
    /// llama-cpp-python server (started by the bench from ./.venv).
    Openai {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 30)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
    },
    /// Issue 9's attacks against a local miner (replayed key exchange, stalled bodies, malformed
    /// flood), each with an honest validator's p50/p99 during it against its p50/p99 alone; then
    /// issue 32's: a 300,000-string stop list (honest tokens/s during it against alone) and a
    /// hostile OpenAI-compatible backend (peak memory per misbehaviour); issues 29 and 30's:
    /// replay-many, relay and hog (the honest validator's answered count during each).
    Attack {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Honest key exchange + challenge rounds per measurement.
        #[arg(long, default_value_t = 20)]
        honest: usize,
        /// Replays of one signed key exchange, with random ciphertexts.
        #[arg(long, default_value_t = 3000)]
        replays: usize,
        /// Connections announcing a 2 MiB body and sending a byte every 2 s.
        #[arg(long, default_value_t = 200)]
        stalled: usize,
        /// Seconds a stalled connection may live before it counts as not dropped.
        #[arg(long, default_value_t = 30)]
        stall_window: u64,
        /// Malformed or mutated requests.
        #[arg(long, default_value_t = 5000)]
        malformed: usize,
        /// Attack requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Which attacks to run.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "replay,stalled,malformed,stop-list,hostile-backend,replay-many,relay,hog"
        )]
        attacks: Vec<attack::AttackKind>,
        /// Honest challenges per measurement of the stop-list attack (alone, then during it).
        #[arg(long, default_value_t = 10)]
        stop_rounds: usize,
        /// Tokens each of those challenges asks for.
        #[arg(long, default_value_t = 128)]
        stop_tokens: u32,
        /// Replays of one captured exchange from each of 16 addresses (replay-many).
        #[arg(long, default_value_t = 8)]
        replays_per_address: usize,
        /// Deadline-length challenges a relayer tries to keep in flight (relay).
        #[arg(long, default_value_t = 10)]
        relay_in_flight: usize,
        /// Connections the hog keeps trying to hold from one address (hog).
        #[arg(long, default_value_t = 3000)]
        hog_connections: usize,
    },
    /// Seven validators' mixed load on two CPU workers with a short deadline: slot-count admission
    /// without hedging against time-aware admission with hedging, same run.
    Answering {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 7)]
        validators: usize,
        /// Challenges each validator sends, one after another.
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        #[arg(long, default_value_t = 4000)]
        deadline_ms: u64,
        /// Tokens of a short challenge (the others ask for the validator's 12,288).
        #[arg(long, default_value_t = 64)]
        short_tokens: u32,
        /// Sequences each worker generates at once.
        #[arg(long, default_value_t = 2)]
        parallel: u32,
        /// The last mode's `ADMISSION_MAX_WAIT_MS`; by default the product's 2000 ms scaled from
        /// its 50 s deadline to this bench's (`deadline_ms` x 0.04).
        #[arg(long)]
        wait_cap_ms: Option<u64>,
    },
    /// An engine in a child process vs on a thread (tokens/s and first token, same requests),
    /// then the time from a child's death (SIGKILL) to its replacement's first answer.
    Process {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        /// Children killed, one after another (the supervisor's backoff grows: 1 s, 2 s, 4 s).
        #[arg(long, default_value_t = 3)]
        deaths: usize,
        #[arg(long, default_value = "Write a short story about a lighthouse keeper who finds a message in a bottle.")]
        prompt: String,
    },
    /// Time from a worker crash to the first challenge answered by its replacement.
    Recovery {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Metagraph sync time and size for a subnet of N neurons written into a local chain
    /// (chopsticks `dev_setStorage`), against one plain storage read as the reference.
    Metagraph {
        /// ws:// URL of a local chain (scripts/start-chain.sh).
        #[arg(long)]
        chain: String,
        #[arg(long, default_value_t = 256)]
        neurons: u16,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 77)]
        netuid: u16,
    },
    /// Microseconds per sampled token: llama.cpp's top_p/temp/dist chain vs the miner's sampler,
    /// at 49,152 and 151,936 tokens and three logit spreads.
    Sampling {
        /// Draws per line for the new sampler (a quarter of them for the slow old chain).
        #[arg(long, default_value_t = 400)]
        draws: usize,
    },
    /// Tokens/s and time to first token through the miner vs llama.cpp directly, then the
    /// first-token time of a cached 2,000-token system prompt.
    Inference {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        /// The worker's n_parallel.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
        /// Challenges the miner admits at once (MAX_CONCURRENT_REQUESTS); the runs send one at a time.
        #[arg(long, default_value_t = 4)]
        inflight: usize,
        /// How the direct reference samples.
        #[arg(long, value_enum, default_value_t = DirectSampler::Argmax)]
        direct: DirectSampler,
        #[arg(long, default_value = "Write a short story about a lighthouse keeper who finds a message in a bottle.")]
        prompt: String,
    },
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    crate::logging::init_console("warning");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.which {
        BenchKind::Protocol { model, concurrency, requests, threads } => {
            rt.block_on(protocol(model, concurrency, requests, threads))
        }
        BenchKind::Workers { model, workers, challenges, inflight, device, threads, parallel } => {
            let engine =
                workers::EngineBench { model, device, threads, inflight, prefix_cache: true, temperature: 0.7 };
            rt.block_on(workers::scaling(engine, workers, challenges, parallel))
        }
        BenchKind::Batching {
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
        BenchKind::Openai { model, requests, max_tokens } => rt.block_on(workers::openai(model, requests, max_tokens)),
        BenchKind::Attack {
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
        BenchKind::Answering { model, validators, rounds, deadline_ms, short_tokens, parallel, wait_cap_ms } => rt
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
        BenchKind::Recovery { model, runs } => rt.block_on(workers::recovery(model, runs)),
        #[cfg(not(feature = "test-hooks"))]
        BenchKind::Recovery { .. } => {
            anyhow::bail!("bench recovery crashes a worker on purpose: build with `--features test-hooks`")
        }
        BenchKind::Process { model, runs, max_tokens, threads, device, deaths, prompt } => {
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
        BenchKind::Metagraph { chain, neurons, runs, netuid } => rt.block_on(metagraph(chain, neurons, runs, netuid)),
        BenchKind::Sampling { draws } => sampling::sampling(draws),
        BenchKind::Inference { model, runs, max_tokens, threads, device, parallel, inflight, direct, prompt } => {
            let engine =
                workers::EngineBench { model, device, threads, inflight, prefix_cache: true, temperature: 0.7 };
            rt.block_on(inference(engine, parallel, runs, max_tokens, direct, prompt))
        }
    }
}

pub(crate) fn bench_config(model: &std::path::Path, threads: i32, in_flight: usize) -> anyhow::Result<Config> {
    bench_config_with(model, threads, in_flight, &[])
}

/// A node configuration for benchmarks: this model, these threads, plus `extra` variables.
pub(crate) fn bench_config_with(
    model: &std::path::Path,
    threads: i32,
    in_flight: usize,
    extra: &[(&str, &str)],
) -> anyhow::Result<Config> {
    let model = model.to_str().context("model path is not UTF-8")?.to_string();
    let threads = threads.to_string();
    let in_flight = in_flight.to_string();
    let mut pairs = vec![
        ("MODEL_PATH", model.as_str()),
        ("LLAMA_THREADS", threads.as_str()),
        ("MAX_CONCURRENT_REQUESTS", in_flight.as_str()),
        ("MAX_MODEL_LEN", "4096"),
        // The bench is one address sending far more than a validator would.
        ("RATE_LIMIT_ENABLED", "false"),
    ];
    pairs.extend_from_slice(extra);
    let cfg = Config::from_source(&Source::from_pairs(pairs))?;
    cfg.validate()?;
    Ok(cfg)
}

pub(crate) async fn start(cfg: &Config) -> anyhow::Result<(MinerGraph, Node)> {
    start_with_auth(cfg, Arc::new(ValidatorAuth::allow_all())).await
}

/// [`start`] admitting only whom `auth` allows.
pub(crate) async fn start_with_auth(cfg: &Config, auth: Arc<ValidatorAuth>) -> anyhow::Result<(MinerGraph, Node)> {
    let specs = crate::config::workers::worker_specs(cfg, &[])?;
    let want = specs.len();
    let parts = NodeParts {
        hotkey: Hotkey::ephemeral(),
        workers: specs,
        auth,
        chain_url: None,
        listen: ("127.0.0.1".into(), 0),
        servers: Default::default(),
    };
    let node = Node::start(cfg, parts).await?;
    let graph = node.door.graph.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while graph.status_now().ready_workers < want {
        anyhow::ensure!(Instant::now() < deadline, "the worker did not become ready: {:?}", graph.workers().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((graph, node))
}

/// Stops the node (and with it the graph) and waits for the engines to free their models (a GPU
/// model freed at process exit aborts it; the next level of a benchmark needs the memory).
pub(crate) async fn stop(node: Node) {
    if !node.stop().await {
        let _ = tokio::task::spawn_blocking(|| wait_for_engines(Duration::from_secs(30))).await;
    }
}

/// Where one worker's step time went, from its snapshot.
pub(crate) async fn step_stats(graph: &MinerGraph, worker: &str) -> StepStats {
    match graph.worker_ref(worker).await {
        Some(w) => ractor::call_t!(w, WorkerMsg::Snapshot, 5000).map(|s| s.steps).unwrap_or_default(),
        None => StepStats::default(),
    }
}

pub(crate) struct Stats {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub(crate) fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    let pick = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    Stats { rps: lat.len() as f64 / wall.as_secs_f64(), p50_ms: pick(0.5), p99_ms: pick(0.99) }
}

/// Runs `n` calls of `f` with `conc` in flight; returns per-call latencies and the wall time.
pub(crate) async fn drive<F, Fut>(n: usize, conc: usize, f: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                f(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

async fn protocol(model: PathBuf, levels: Vec<usize>, requests: usize, threads: i32) -> anyhow::Result<()> {
    let max_conc = levels.iter().copied().max().unwrap_or(1);
    let cfg = bench_config(&model, threads, max_conc * 2)?;
    let (graph, node) = start(&cfg).await?;
    let url = format!("http://{}", node.addr);
    println!("protocol bench: {} challenges per level, 1 generated token each, model {}", requests, model.display());
    println!("{:>5}  {:>28}  {:>28}  {:>10}", "conc", "direct to actor graph", "full miner (HTTP+Fernet)", "overhead");
    for &conc in &levels {
        // Reference: the same generation submitted to the scheduler directly.
        let g = graph.clone();
        let (lat, wall) = drive(requests, conc, move |_| {
            let g = g.clone();
            async move {
                let req = GenerationRequest::one_turn("Say hi", 1, Instant::now() + Duration::from_secs(50));
                g.generate(req).await.map(|_| ()).map_err(anyhow::Error::from)
            }
        })
        .await?;
        let direct = stats(lat, wall);

        // The miner: each connection is a validator with its own key, as on mainnet.
        let mut clients = Vec::new();
        for _ in 0..conc {
            let mut c = ValidatorClient::new(&url, Hotkey::ephemeral());
            c.handshake().await?;
            clients.push(Arc::new(Mutex::new(c)));
        }
        let clients = Arc::new(clients);
        let body = challenge_body("Say hi", 1, 0.7);
        // The tiny model's one token is sometimes empty, which the miner refuses with a 502
        // rather than send an empty 200 (SCORING.md): a full round trip all the same, counted.
        let empty = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = empty.clone();
        let (lat, wall) = drive(requests, conc, move |i| {
            let (clients, body, empty) = (clients.clone(), body.clone(), counted.clone());
            async move {
                let c = clients[i % clients.len()].clone();
                let c = c.lock().await;
                match c.challenge_once(&body).await {
                    Ok(_) => Ok(()),
                    Err(ClientError::Status { status: 502, body, .. }) if body.contains("empty answer") => {
                        empty.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await?;
        let full = stats(lat, wall);
        let empty = empty.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "{conc:>5}  {:>8.0} rps p50 {:>5.2} p99 {:>6.2}  {:>8.0} rps p50 {:>5.2} p99 {:>6.2}  {:>+7.2} ms",
            direct.rps,
            direct.p50_ms,
            direct.p99_ms,
            full.rps,
            full.p50_ms,
            full.p99_ms,
            full.p50_ms - direct.p50_ms
        );
        if empty > 0 {
            println!("       ({empty} of the miner's answers were empty, refused with 502, timed as round trips)");
        }
    }
    println!("(latencies in ms; overhead = full p50 - direct p50)");
    stop(node).await;
    Ok(())
}

async fn inference(
    engine: workers::EngineBench,
    parallel: u32,
    runs: usize,
    max_tokens: u32,
    sampler: DirectSampler,
    prompt: String,
) -> anyhow::Result<()> {
    let workers = serde_json::to_string(&[engine.device.worker_json(
        "w0",
        &engine.model,
        engine.threads,
        parallel,
        engine.prefix_cache,
    )])?;
    let cfg = bench_config_with(&engine.model, engine.threads, engine.inflight, &[("WORKERS", workers.as_str())])?;
    let (graph, node) = start(&cfg).await?;
    let url = format!("http://{}", node.addr);

    // The direct reference lives on its own thread, like the worker's engine.
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = engine.device.spec(&engine.model, engine.threads);
    let direct = std::thread::spawn(move || -> anyhow::Result<()> {
        let model = reference::load(&spec)?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(2048))
            .with_n_batch(512)
            .with_n_ubatch(512)
            .with_n_threads(spec.threads)
            .with_n_threads_batch(spec.threads);
        let backend = loosh_actors::inference::embedded::backend()?;
        let mut ctx = model.new_context(backend, params)?;
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let source = model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .unwrap_or_else(|| loosh_actors::inference::chat_template::CHATML_TEMPLATE.into());
        let template = ChatTemplate::new(&source, &piece(vocab.bos()), &piece(vocab.eos()))?;
        while let Ok(Some(prompt)) = rx.recv() {
            let rendered = template.render(&[ChatMessage::new("user", &prompt)], None)?;
            let _ = res_tx.send(reference::generate(&model, &mut ctx, &rendered, max_tokens, sampler));
        }
        Ok(())
    });

    let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
    client.handshake().await?;
    let (mut d_tps, mut m_tps, mut d_ttft, mut g_ttft) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "inference bench: {runs} runs x {max_tokens} tokens on {}, {} thread(s), n_parallel {parallel}, direct sampling {sampler:?}, miner sampling top_p 0.95 temperature 0.7, model {}",
        engine.device,
        engine.threads,
        engine.model.display()
    );
    let mut before = StepStats::default();
    for run in 0..=runs {
        // A prompt of its own per run, so that the miner's prefix cache does not skip its prefill
        // (only the chat template's fixed start is shared, as between real challenges).
        let prompt = format!("Run {run}. {prompt}");
        tx.send(Some(prompt.clone()))?;
        let body = challenge_body(&prompt, max_tokens, 0.7);
        let (ttft, n, total) = res_rx.recv().await.context("direct thread ended")??;
        // Through the miner: full HTTP + crypto round trip.
        let t = Instant::now();
        let (reply, _) = client.challenge_once(&body).await?;
        let m_total = t.elapsed();
        // Through the actor graph, for first-token latency (same process, so the instants compare).
        let submitted = Instant::now();
        let graph_prompt = format!("Graph {run}. {prompt}");
        let g = graph
            .generate(GenerationRequest::one_turn(&graph_prompt, 1, Instant::now() + Duration::from_secs(50)))
            .await?;
        let g_first = g.first_token_at.map(|f| f.duration_since(submitted)).unwrap_or_default();
        if run == 0 {
            before = step_stats(&graph, "w0").await;
            continue; // warm-up
        }
        d_tps.push(n as f64 / total.as_secs_f64());
        m_tps.push(reply.usage.completion_tokens as f64 / m_total.as_secs_f64());
        d_ttft.push(ttft.as_secs_f64() * 1e3);
        g_ttft.push(g_first.as_secs_f64() * 1e3);
        println!(
            "run {run}: direct {n} tok in {:.0} ms ({:.1} tok/s, ttft {:.1} ms) | miner {} tok in {:.0} ms ({:.1} tok/s), graph ttft {:.1} ms",
            total.as_secs_f64() * 1e3,
            d_tps.last().unwrap(),
            d_ttft.last().unwrap(),
            reply.usage.completion_tokens,
            m_total.as_secs_f64() * 1e3,
            m_tps.last().unwrap(),
            g_ttft.last().unwrap()
        );
    }
    tx.send(None)?;
    let _ = direct.join();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (dt, mt, df, gf) = (med(&mut d_tps), med(&mut m_tps), med(&mut d_ttft), med(&mut g_ttft));
    println!("median: direct {dt:.1} tok/s, miner {mt:.1} tok/s (ratio {:.3}); ttft direct {df:.1} ms, via actor graph {gf:.1} ms ({:+.1} ms)", mt / dt, gf - df);
    println!("miner steps: {}", step_stats(&graph, "w0").await.since(&before).summary());
    prefix_reuse(&graph).await?;
    stop(node).await;
    Ok(())
}

/// First-token time of two challenges sharing a ~2,000-token system prompt: the second finds the
/// prefix in the KV cache and prefills only its own question.
async fn prefix_reuse(graph: &MinerGraph) -> anyhow::Result<()> {
    let system = "You are a careful assistant who answers questions about lighthouses, ships and the sea. ".repeat(110);
    let mut ttft = Vec::new();
    for question in ["Who keeps the lighthouse?", "What does the keeper find in the bottle?"] {
        let mut req = GenerationRequest::one_turn(question, 1, Instant::now() + Duration::from_secs(50));
        req.messages.insert(0, ChatMessage::new("system", &system));
        let submitted = Instant::now();
        let g = graph.generate(req).await?;
        let first = g.first_token_at.map(|f| f.duration_since(submitted)).unwrap_or_default();
        ttft.push((first.as_secs_f64() * 1e3, g.prompt_tokens));
    }
    println!(
        "prefix reuse: {}-token prompt, first token {:.1} ms uncached; {}-token prompt sharing its system prompt, first token {:.1} ms ({:.1}x faster)",
        ttft[0].1,
        ttft[0].0,
        ttft[1].1,
        ttft[1].0,
        ttft[0].0 / ttft[1].0.max(1e-3)
    );
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        })
        .unwrap_or(0)
}

async fn metagraph(url: String, neurons: u16, runs: usize, netuid: u16) -> anyhow::Result<()> {
    use loosh_actors::chain::client::ChainClient;
    use serde_json::json;
    let chain = ChainClient::connect(&url).await?;
    // Write a subnet of `neurons` neurons straight into the chain's state.
    let hotkeys: Vec<Hotkey> = (0..neurons).map(|_| Hotkey::ephemeral()).collect();
    let keys: Vec<_> = hotkeys.iter().enumerate().map(|(uid, h)| json!([[netuid, uid], h.ss58()])).collect();
    let uids: Vec<_> = hotkeys.iter().enumerate().map(|(uid, h)| json!([[netuid, h.ss58()], uid])).collect();
    let alpha: Vec<_> =
        hotkeys.iter().enumerate().map(|(uid, h)| json!([[h.ss58(), netuid], 1_000_000_000u64 * uid as u64])).collect();
    let permits: Vec<bool> = (0..neurons).map(|uid| uid < 64).collect();
    let incentive: Vec<u16> = (0..neurons).map(|uid| uid.wrapping_mul(97)).collect();
    chain
        .raw_request(
            "dev_setStorage",
            json!([{"SubtensorModule": {
                "SubnetworkN": [[[netuid], neurons]],
                "Keys": keys, "Uids": uids, "TotalHotkeyAlpha": alpha,
                "ValidatorPermit": [[[netuid], permits]],
                "Incentive": [[[netuid], incentive]],
            }}]),
        )
        .await?;
    let _ = chain.metagraph(netuid).await?; // warm the connection and metadata caches
    let before = rss_kib();
    let (mut syncs, mut reads) = (Vec::new(), Vec::new());
    let mut size = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let graph = chain.metagraph(netuid).await?;
        syncs.push(t.elapsed());
        anyhow::ensure!(graph.len() == usize::from(neurons), "read {} neurons, wrote {neurons}", graph.len());
        size = graph.iter().map(|n| std::mem::size_of_val(n) + n.hotkey.len()).sum::<usize>();
        let t = Instant::now();
        chain.block_number().await?;
        reads.push(t.elapsed());
    }
    syncs.sort();
    reads.sort();
    println!("metagraph sync of {neurons} neurons on the local chain, {runs} runs:");
    println!(
        "  sync: median {:.1} ms (min {:.1}, max {:.1})",
        syncs[runs / 2].as_secs_f64() * 1e3,
        syncs[0].as_secs_f64() * 1e3,
        syncs[runs - 1].as_secs_f64() * 1e3
    );
    println!("  reference, one head read: median {:.2} ms", reads[runs / 2].as_secs_f64() * 1e3);
    println!("  metagraph held: {size} bytes; process RSS {} KiB -> {} KiB across the syncs", before, rss_kib());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        which: BenchKind,
    }

    fn parse(args: &[&str]) -> Result<BenchKind, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.which)
    }

    #[test]
    fn the_engine_benchmarks_take_a_device_threads_parallel_and_inflight() {
        let BenchKind::Batching { device, threads, parallel, inflight, max_tokens, no_reference, .. } = parse(&[
            "batching",
            "--model",
            "m.gguf",
            "--device",
            "gpu1",
            "--threads",
            "8",
            "--parallel",
            "1,16",
            "--inflight",
            "16",
            "--max-tokens",
            "128",
        ])
        .unwrap() else {
            panic!("batching")
        };
        assert_eq!((device, threads, parallel, inflight), (BenchDevice(Some(1)), 8, vec![1, 16], 16));
        assert_eq!((max_tokens, no_reference), (vec![128], false));

        let BenchKind::Inference { device, parallel, inflight, direct, .. } =
            parse(&["inference", "--model", "m.gguf", "--device", "cpu"]).unwrap()
        else {
            panic!("inference")
        };
        assert_eq!((device, parallel, inflight, direct), (BenchDevice(None), 1, 4, DirectSampler::Argmax));

        // `--concurrency` stays as the old name of `--inflight`.
        let BenchKind::Workers { inflight, device, .. } =
            parse(&["workers", "--model", "m.gguf", "--concurrency", "3", "--device", "gpu0"]).unwrap()
        else {
            panic!("workers")
        };
        assert_eq!((inflight, device), (3, BenchDevice(Some(0))));
    }

    #[test]
    fn a_device_that_is_neither_cpu_nor_a_gpu_is_refused_by_name() {
        let err = parse(&["batching", "--model", "m.gguf", "--device", "tpu0"]).err().expect("refused").to_string();
        assert!(err.contains("cpu or gpuN"), "{err}");
    }
}
