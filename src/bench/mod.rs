//! `loosh-miner bench`: the miner measured against a reference in the same run.
//!
//! - `protocol`: challenge round trips through HTTP + Fernet + actors, with the model generating one
//!   token, against the same generations submitted to the actor graph directly: the difference is
//!   the miner's own cost.
//! - `inference`: tokens/s and time to first token through the miner against a plain llama.cpp
//!   loop on the same GGUF, prompt and sampling settings, interleaved run by run.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::graph::MinerGraph;
use loosh_actors::inference::chat_template::ChatTemplate;
use loosh_actors::inference::embedded::sampler_for;
use loosh_actors::inference::request::GenerationRequest;
use loosh_actors::protocol::messages::ChatMessage;
use loosh_actors::protocol::rsa_keys::MinerRsaKey;
use loosh_actors::protocol::signature::Hotkey;
use tokio::sync::Mutex;

use crate::config::{Config, Source};
use crate::node::{http_settings, spawn_graph, HttpNode};
use crate::validator_client::{challenge_body, ValidatorClient};

mod workers;

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
    /// Throughput of 1, 2, 4 CPU workers (1 thread each) on a fixed challenge mix.
    Workers {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
        workers: Vec<usize>,
        #[arg(long, default_value_t = 48)]
        challenges: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// One worker generating 1 vs N sequences at once (continuous batching gain).
    Batching {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "1,4", value_delimiter = ',')]
        parallel: Vec<u32>,
        #[arg(long, default_value_t = 32)]
        challenges: usize,
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
    /// Tokens/s and time to first token through the miner vs llama.cpp directly.
    Inference {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long, default_value = "Write a short story about a lighthouse keeper who finds a message in a bottle.")]
        prompt: String,
    },
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    crate::logging::init("warning", None);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.which {
        BenchKind::Protocol { model, concurrency, requests, threads } => {
            rt.block_on(protocol(model, concurrency, requests, threads))
        }
        BenchKind::Workers { model, workers, challenges, concurrency } => {
            rt.block_on(workers::scaling(model, workers, challenges, concurrency))
        }
        BenchKind::Batching { model, parallel, challenges } => {
            rt.block_on(workers::batching(model, parallel, challenges))
        }
        BenchKind::Openai { model, requests, max_tokens } => rt.block_on(workers::openai(model, requests, max_tokens)),
        BenchKind::Recovery { model, runs } => rt.block_on(workers::recovery(model, runs)),
        BenchKind::Metagraph { chain, neurons, runs, netuid } => rt.block_on(metagraph(chain, neurons, runs, netuid)),
        BenchKind::Inference { model, runs, max_tokens, threads, prompt } => {
            rt.block_on(inference(model, runs, max_tokens, threads, prompt))
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
        ("MAX_MODEL_LEN", "2048"),
    ];
    pairs.extend_from_slice(extra);
    let cfg = Config::from_source(&Source::from_pairs(pairs))?;
    cfg.validate()?;
    Ok(cfg)
}

pub(crate) async fn start(cfg: &Config) -> anyhow::Result<(MinerGraph, HttpNode)> {
    let specs = crate::workers::worker_specs(cfg, &[])?;
    let want = specs.len();
    let graph = spawn_graph(cfg, specs, Arc::new(MinerRsaKey::generate()?)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while graph.status().await.is_none_or(|s| s.ready_workers < want) {
        anyhow::ensure!(Instant::now() < deadline, "the worker did not become ready: {:?}", graph.workers().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let node = HttpNode::start(
        graph.clone(),
        Arc::new(ValidatorAuth::allow_all()),
        Hotkey::ephemeral().ss58().into(),
        http_settings(cfg),
        "127.0.0.1",
        0,
        2,
    )?;
    Ok((graph, node))
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
        let (lat, wall) = drive(requests, conc, move |i| {
            let (clients, body) = (clients.clone(), body.clone());
            async move {
                let c = clients[i % clients.len()].clone();
                let c = c.lock().await;
                c.challenge_once(&body).await.map(|_| ()).map_err(anyhow::Error::from)
            }
        })
        .await?;
        let full = stats(lat, wall);
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
    }
    println!("(latencies in ms; overhead = full p50 - direct p50)");
    node.stop().await;
    graph.stop();
    Ok(())
}

/// One generation with llama.cpp called directly: (time to first token, completion tokens, total).
fn direct_generate(
    model: &LlamaModel,
    ctx: &mut llama_cpp_2::context::LlamaContext,
    prompt: &str,
    max_tokens: u32,
) -> anyhow::Result<(Duration, u32, Duration)> {
    let start = Instant::now();
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), true);
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(512, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch.add(*t, i as i32, &[0], i == tokens.len() - 1)?;
    }
    ctx.decode(&mut batch)?;
    let mut sampler = sampler_for(0.7, 0.95);
    let mut idx = batch.n_tokens() - 1;
    let mut pos = tokens.len() as i32;
    let mut ttft = None;
    let mut n = 0;
    while n < max_tokens {
        let token = sampler.sample(ctx, idx);
        ttft.get_or_insert_with(|| start.elapsed());
        if vocab.is_eog(token) {
            break;
        }
        let _piece = vocab.token_to_piece(token, false, None);
        n += 1;
        batch.clear();
        batch.add(token, pos, &[0], true)?;
        pos += 1;
        ctx.decode(&mut batch)?;
        idx = 0;
    }
    Ok((ttft.unwrap_or_default(), n, start.elapsed()))
}

async fn inference(
    model_path: PathBuf,
    runs: usize,
    max_tokens: u32,
    threads: i32,
    prompt: String,
) -> anyhow::Result<()> {
    let cfg = bench_config(&model_path, threads, 4)?;
    let (graph, node) = start(&cfg).await?;
    let url = format!("http://{}", node.addr);

    // The direct reference lives on its own thread, like the worker's engine.
    let (tx, rx) = std::sync::mpsc::channel::<Option<()>>();
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel();
    let p = prompt.clone();
    let direct = std::thread::spawn(move || -> anyhow::Result<()> {
        // llama.cpp is initialised once per process; share the miner's initialisation.
        let backend = loosh_actors::inference::embedded::backend()?;
        let model = LlamaModel::load_from_file(backend, &model_path, &LlamaModelParams::default())?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(2048))
            .with_n_batch(512)
            .with_n_ubatch(512)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut ctx = model.new_context(backend, params)?;
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let source = model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .unwrap_or_else(|| loosh_actors::inference::chat_template::CHATML_TEMPLATE.into());
        let template = ChatTemplate::new(&source, &piece(vocab.bos()), &piece(vocab.eos()))?;
        let rendered = template.render(&[ChatMessage::new("user", &p)], None)?;
        while let Ok(Some(())) = rx.recv() {
            let _ = res_tx.send(direct_generate(&model, &mut ctx, &rendered, max_tokens));
        }
        Ok(())
    });

    let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
    client.handshake().await?;
    let body = challenge_body(&prompt, max_tokens, 0.7);
    let (mut d_tps, mut m_tps, mut d_ttft, mut g_ttft) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "inference bench: {runs} runs x {max_tokens} tokens, {threads} thread(s), model {}",
        cfg.model_path.as_ref().unwrap().display()
    );
    for run in 0..=runs {
        tx.send(Some(()))?;
        let (ttft, n, total) = res_rx.recv().await.context("direct thread ended")??;
        // Through the miner: full HTTP + crypto round trip.
        let t = Instant::now();
        let (reply, _) = client.challenge_once(&body).await?;
        let m_total = t.elapsed();
        // Through the actor graph, for first-token latency (same process, so the instants compare).
        let submitted = Instant::now();
        let g =
            graph.generate(GenerationRequest::one_turn(&prompt, 1, Instant::now() + Duration::from_secs(50))).await?;
        let g_first = g.first_token_at.map(|f| f.duration_since(submitted)).unwrap_or_default();
        if run == 0 {
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
    node.stop().await;
    graph.stop();
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
