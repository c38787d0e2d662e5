//! Worker benchmarks: scaling over CPU workers, continuous batching, the openai worker's overhead,
//! and recovery after a crash. Each prints its reference next to its figure.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::front_door::FrontDoor;
use loosh_actors::front_door::GenerationRequest;
use loosh_actors::settings::Hotkey;
use loosh_actors::workers::worker::WorkerMsg;
use serde_json::json;

use crate::load::{drive, stats};
use crate::miner::{bench_config_with, start, step_stats, stop};
use crate::reference::{self, BenchDevice};
use loosh_miner::client::validator::{challenge_body, ValidatorClient};

/// Where and how the engine benchmarks run one worker's engine.
pub struct EngineBench {
    pub model: PathBuf,
    pub device: BenchDevice,
    pub threads: i32,
    /// Challenges in flight at once.
    pub inflight: usize,
    pub prefix_cache: bool,
    /// The challenges' temperature (0.7 like the validator's; 0 is greedy, the engine's ceiling
    /// without the sampler's cost).
    pub temperature: f32,
}

/// The fixed mix: answers of `lengths` tokens in turn, different prompts.
fn mix(i: usize, lengths: &[u32], temperature: f32) -> GenerationRequest {
    let max_tokens = lengths[i % lengths.len()];
    let prompt = format!("Question number {i}: tell me something.");
    let mut req = GenerationRequest::one_turn(&prompt, max_tokens, Instant::now() + Duration::from_secs(50));
    req.temperature = temperature;
    req
}

/// Runs the mix through the front door (no protocol); returns (challenges/s, tokens/s, wall).
async fn run_mix(
    door: &FrontDoor,
    n: usize,
    conc: usize,
    lengths: &[u32],
    temperature: f32,
) -> anyhow::Result<(f64, f64, Duration)> {
    let tokens = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (g, t, lengths) = (door.clone(), tokens.clone(), Arc::new(lengths.to_vec()));
    let (_, wall) = drive(n, conc, move |i| {
        let (g, t, lengths) = (g.clone(), t.clone(), lengths.clone());
        async move {
            let gen = g.generate(mix(i, &lengths, temperature)).await?;
            t.fetch_add(u64::from(gen.completion_tokens), std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let secs = wall.as_secs_f64();
    Ok((n as f64 / secs, tokens.load(std::sync::atomic::Ordering::Relaxed) as f64 / secs, wall))
}

/// `count` embedded workers of `parallel` sequences each, on the bench's device.
fn embedded_workers(engine: &EngineBench, count: usize, parallel: u32) -> String {
    let list: Vec<_> = (0..count)
        .map(|i| {
            engine.device.worker_json(&format!("w{i}"), &engine.model, engine.threads, parallel, engine.prefix_cache)
        })
        .collect();
    serde_json::to_string(&list).expect("JSON")
}

const DEFAULT_MIX: [u32; 3] = [16, 64, 128];

pub async fn scaling(engine: EngineBench, counts: Vec<usize>, n: usize, parallel: u32) -> anyhow::Result<()> {
    println!(
        "worker scaling on {}: {n} challenges (16/64/128 tokens), {} in flight, {} thread(s) and {parallel} sequence(s) per worker, {} cores",
        engine.device,
        engine.inflight,
        engine.threads,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let mut base = None;
    for count in counts {
        let workers = embedded_workers(&engine, count, parallel);
        let cfg = bench_config_with(&engine.model, engine.threads, 64, &[("WORKERS", workers.as_str())])?;
        let node = start(&cfg).await?;
        let door = &node.door;
        let (cps, tps, wall) = run_mix(door, n, engine.inflight, &DEFAULT_MIX, engine.temperature).await?;
        let base_tps = *base.get_or_insert(tps);
        println!(
            "{count} worker(s): {cps:6.2} challenges/s, {tps:7.1} tokens/s, {:5.2} s  (x{:.2} of 1 worker)",
            wall.as_secs_f64(),
            tps / base_tps
        );
        println!("  w0 {}", step_stats(door, "w0").await.summary());
        stop(node).await;
    }
    Ok(())
}

pub async fn batching(
    engine: EngineBench,
    parallel: Vec<u32>,
    n: usize,
    lengths: Vec<u32>,
    reference: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(!lengths.is_empty() && lengths.iter().all(|&l| l > 0), "--max-tokens needs positive lengths");
    let longest = lengths.iter().copied().max().unwrap_or(128);
    println!(
        "continuous batching: one worker on {}, {} thread(s), {n} challenges ({} tokens, temperature {}), {} in flight; reference: llama.cpp batched decoding, argmax, 64-token prompts x {longest} tokens",
        engine.device,
        engine.threads,
        lengths.iter().map(u32::to_string).collect::<Vec<_>>().join("/"),
        engine.temperature,
        engine.inflight
    );
    let mut base = None;
    for p in parallel {
        let workers = embedded_workers(&engine, 1, p);
        let cfg = bench_config_with(&engine.model, engine.threads, 64, &[("WORKERS", workers.as_str())])?;
        let node = start(&cfg).await?;
        let door = &node.door;
        let (cps, tps, wall) = run_mix(door, n, engine.inflight, &lengths, engine.temperature).await?;
        let base_tps = *base.get_or_insert(tps);
        let w = door.graph.worker_ref("w0").await.expect("worker");
        let snap = ractor::call_t!(w, WorkerMsg::Snapshot, 5000)?;
        println!(
            "n_parallel {p}: {cps:6.2} challenges/s, {tps:7.1} tokens/s, {:5.2} s, peak {} sequences at once (x{:.2})",
            wall.as_secs_f64(),
            snap.peak_active,
            tps / base_tps
        );
        println!("  miner {}", snap.steps.summary());
        stop(node).await;
        if reference {
            let seqs = (p as usize).min(engine.inflight) as u32;
            let spec = engine.device.spec(&engine.model, engine.threads);
            let (direct, ms, with_prefill) =
                tokio::task::spawn_blocking(move || reference::batched(&spec, seqs, longest)).await??;
            println!(
                "  llama.cpp batched, {seqs} sequences: {direct:7.1} tokens/s ({ms:.2} ms/step); miner/direct {:.3}; counting its {seqs} x 64-token prefill too: {with_prefill:.1} tokens/s, miner/direct {:.3}",
                tps / direct,
                tps / with_prefill
            );
        }
    }
    Ok(())
}

/// llama-cpp-python's OpenAI server from ./.venv on a free port, its output in a log file so that
/// a crash is reported as one (signal, exit code, the end of the log), not as a broken stream.
struct PyServer {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl PyServer {
    /// `Err` naming how the server ended, with the tail of its log, once it has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        use std::os::unix::process::ExitStatusExt;
        let Some(status) = self.child.try_wait()? else { return Ok(()) };
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("with code {code}"),
            (None, Some(signal)) => format!("with signal {signal}"),
            (None, None) => format!("({status})"),
        };
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        anyhow::bail!("llama-cpp-python server exited {how}; the end of its log ({}):\n{tail}", self.log.display())
    }

    /// A failed request's error, or, when the server died under it, that.
    fn explain(&mut self, e: impl Into<anyhow::Error>) -> anyhow::Error {
        // A crashed process closes its sockets a moment before it can be reaped.
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            if let Err(death) = self.check_alive() {
                return death;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        e.into()
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn openai(model: PathBuf, requests: usize, max_tokens: u32) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let python = if std::path::Path::new(".venv/bin/python3").is_file() { ".venv/bin/python3" } else { "python3" };
    let log = std::env::temp_dir().join(format!("llama-cpp-python-{port}.log"));
    let out = std::fs::File::create(&log)?;
    let child = std::process::Command::new(python)
        .args([
            "-m",
            "llama_cpp.server",
            "--host",
            "127.0.0.1",
            "--n_threads",
            "1",
            "--n_ctx",
            "2048",
            "--model_alias",
            "m",
            // Queue concurrent requests instead of ending the one in progress.
            "--interrupt_requests",
            "false",
        ])
        .args(["--port", &port.to_string()])
        .arg("--model")
        .arg(&model)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let mut server = PyServer { child, port, log };
    let base = format!("http://127.0.0.1:{}/v1", server.port);
    let http = reqwest::Client::builder().no_proxy().build()?;
    let ready_by = Instant::now() + Duration::from_secs(120);
    while !http.get(format!("{base}/models")).send().await.is_ok_and(|r| r.status().is_success()) {
        server.check_alive()?;
        anyhow::ensure!(
            Instant::now() < ready_by,
            "llama-cpp-python's server did not start (scripts/install.sh --test installs it)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let workers = serde_json::to_string(
        &json!([{"kind": "openai", "name": "api0", "base_url": base, "model": "m", "n_parallel": 1}]),
    )?;
    let cfg = bench_config_with(&model, 1, 8, &[("WORKERS", workers.as_str())])?;
    let node = start(&cfg).await?;
    let mut client = ValidatorClient::new(&format!("http://{}", node.addr), Hotkey::ephemeral());
    client.handshake().await?;
    let body = challenge_body("Say something.", max_tokens, 0.7);
    let direct_body = json!({"model": "m", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.95, "stream": true});

    let (mut direct, mut miner) = (Vec::new(), Vec::new());
    for i in 0..=requests {
        // Interleaved, so that drift on the machine hits both alike.
        let t = Instant::now();
        let mut res = match http.post(format!("{base}/chat/completions")).json(&direct_body).send().await {
            Ok(res) => res,
            Err(e) => return Err(server.explain(e)),
        };
        loop {
            match res.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(server.explain(e)),
            }
        }
        let d = t.elapsed();
        let t = Instant::now();
        if let Err(e) = client.challenge_once(&body).await {
            return Err(server.explain(e));
        }
        let m = t.elapsed();
        if i > 0 {
            direct.push(d);
            miner.push(m);
        }
    }
    let (d, m) = (stats(direct.clone(), direct.iter().sum()), stats(miner.clone(), miner.iter().sum()));
    println!(
        "openai worker overhead ({requests} requests, {max_tokens} tokens, llama-cpp-python server, model {}):",
        model.display()
    );
    println!("  direct streamed call: p50 {:7.2} ms  p99 {:7.2} ms", d.p50_ms, d.p99_ms);
    println!(
        "  through the miner:    p50 {:7.2} ms  p99 {:7.2} ms  (HTTP + Fernet + actors + SSE parsing)",
        m.p50_ms, m.p99_ms
    );
    println!("  overhead:             p50 {:+7.2} ms  p99 {:+7.2} ms", m.p50_ms - d.p50_ms, m.p99_ms - d.p99_ms);
    stop(node).await;
    drop(server);
    Ok(())
}

/// Needs the `test-hooks` feature (it crashes a worker on purpose): `cargo run --release
/// --features test-hooks -- bench recovery`.
#[cfg(feature = "test-hooks")]
pub async fn recovery(model: PathBuf, runs: usize) -> anyhow::Result<()> {
    let engine = EngineBench {
        model: model.clone(),
        device: BenchDevice(None),
        threads: 1,
        inflight: 8,
        prefix_cache: true,
        temperature: 0.7,
    };
    let workers = embedded_workers(&engine, 1, 1);
    let cfg = bench_config_with(&model, 1, 8, &[("WORKERS", workers.as_str())])?;
    let node = start(&cfg).await?;
    let door = &node.door;
    println!("recovery: crash the only worker, then time until a challenge is answered by its replacement (default restart policy: first backoff 1 s)");
    let mut times = Vec::new();
    for _ in 0..runs {
        let worker = door.graph.worker_ref("w0").await.expect("worker up");
        let crashed = Instant::now();
        worker.cast(WorkerMsg::CrashForTest)?;
        loop {
            let mut req = mix(0, &DEFAULT_MIX, 0.7);
            req.max_tokens = 1;
            if door.generate(req).await.is_ok()
                && door.graph.worker_ref("w0").await.is_some_and(|w| w.get_id() != worker.get_id())
            {
                break;
            }
            anyhow::ensure!(crashed.elapsed() < Duration::from_secs(120), "no recovery");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(crashed.elapsed());
        println!("  recovered in {:7.1} ms", crashed.elapsed().as_secs_f64() * 1e3);
    }
    times.sort();
    println!(
        "median {:.1} ms over {runs} crashes (backoff grows 1 s, 2 s, 4 s ... within the restart window)",
        times[times.len() / 2].as_secs_f64() * 1e3
    );
    stop(node).await;
    Ok(())
}
