//! `loosh-bench process`: what running an engine in a child process costs, and how fast a dead child is
//! replaced. Two workers on the same model and device, one on a thread of the node and one in a
//! child process, answer the same greedy challenges in turn (order alternating run by run), each
//! sent straight to its worker so the scheduler does not pick; then the child is killed
//! (SIGKILL, as the OOM killer does) a few times, each time under a challenge in flight.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use loosh_actors::front_door::FrontDoor;
use loosh_actors::inference::request::{BackendError, Generation, GenerationRequest};
use loosh_actors::settings::RestartPolicy;
use loosh_actors::workers::worker::WorkerMsg;
use ractor::ActorRef;

use crate::miner::{bench_config_with, start, stop};
use crate::reference::BenchDevice;

pub struct ProcessBench {
    pub model: PathBuf,
    pub device: BenchDevice,
    pub threads: i32,
    pub runs: usize,
    pub max_tokens: u32,
    pub deaths: usize,
    pub prompt: String,
}

const WORKERS: [&str; 2] = ["thread", "child"];

async fn worker(door: &FrontDoor, name: &str) -> anyhow::Result<ActorRef<WorkerMsg>> {
    door.graph.worker_ref(name).await.with_context(|| format!("worker {name} is not running"))
}

async fn generate(w: &ActorRef<WorkerMsg>, request: GenerationRequest) -> anyhow::Result<Generation> {
    Ok(ractor::call!(w, |reply| WorkerMsg::Generate { request, reply })??)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn process(b: ProcessBench) -> anyhow::Result<()> {
    let list: Vec<_> = WORKERS
        .iter()
        .map(|name| {
            let mut w = b.device.worker_json(name, &b.model, b.threads, 1, true);
            w["process"] = (*name).into();
            w
        })
        .collect();
    let workers = serde_json::to_string(&list)?;
    let cfg = bench_config_with(&b.model, b.threads, 8, &[("WORKERS", workers.as_str())])?;
    let node = start(&cfg).await?;
    let door = &node.door;
    println!(
        "process boundary: {} runs x {} tokens (greedy) on {}, {} thread(s), model {}; one worker on a thread, one in a child process, same requests in alternating order",
        b.runs,
        b.max_tokens,
        b.device,
        b.threads,
        b.model.display()
    );
    // Per worker: end-to-end tokens/s, time to first token (ms), the engine's decode tokens/s.
    let mut figures: [[Vec<f64>; 3]; 2] = Default::default();
    for run in 0..=b.runs {
        let prompt = format!("Run {run}. {}", b.prompt);
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let w = worker(door, WORKERS[i]).await?;
            let mut req = GenerationRequest::one_turn(&prompt, b.max_tokens, Instant::now() + Duration::from_secs(120));
            req.temperature = 0.0;
            let submitted = Instant::now();
            let g = generate(&w, req).await?;
            let received = Instant::now();
            if run == 0 {
                continue; // warm-up
            }
            let first = g.first_token_at.context("no token generated")?;
            let decode = g.finished_at.saturating_duration_since(first).as_secs_f64();
            figures[i][0].push(f64::from(g.completion_tokens) / (received - submitted).as_secs_f64());
            figures[i][1].push(first.saturating_duration_since(submitted).as_secs_f64() * 1e3);
            figures[i][2].push(f64::from(g.completion_tokens.saturating_sub(1)) / decode.max(1e-9));
        }
    }
    let mut m = [[0.0; 3]; 2];
    for (i, name) in WORKERS.iter().enumerate() {
        for k in 0..3 {
            m[i][k] = median(&mut figures[i][k]);
        }
        println!(
            "  {name:>6}: {:8.1} tokens/s end to end, first token {:7.2} ms, engine decode {:8.1} tokens/s (medians)",
            m[i][0], m[i][1], m[i][2]
        );
    }
    // Paired by run (the same request on both, back to back): drift in the machine's load cancels.
    let mut tps: Vec<f64> = figures[1][0].iter().zip(&figures[0][0]).map(|(c, t)| (c / t - 1.0) * 100.0).collect();
    let mut ttft: Vec<f64> = figures[1][1].iter().zip(&figures[0][1]).map(|(c, t)| c - t).collect();
    println!(
        "  child vs thread: tokens/s {:+.2} %, first token {:+.3} ms; paired by run (median): {:+.2} %, {:+.3} ms (goal: within 1 % and 1 ms)",
        (m[1][0] / m[0][0] - 1.0) * 100.0,
        m[1][1] - m[0][1],
        median(&mut tps),
        median(&mut ttft)
    );

    println!(
        "death: SIGKILL the child under a {}-token challenge, {} time(s); the challenge's error, then the first challenge its replacement answers (model load and the supervisor's backoff included)",
        b.max_tokens.max(2000),
        b.deaths
    );
    let policy = RestartPolicy::default();
    for death in 0..b.deaths {
        let w = worker(door, "child").await?;
        let pid = ractor::call_t!(w, WorkerMsg::Snapshot, 5000)?.engine_pid.context("the child worker has no pid")?;
        let mut long =
            GenerationRequest::one_turn(&b.prompt, b.max_tokens.max(2000), Instant::now() + Duration::from_secs(120));
        long.temperature = 0.0;
        let held = {
            let w = w.clone();
            tokio::spawn(async move { ractor::call!(w, |reply| WorkerMsg::Generate { request: long, reply }) })
        };
        let started = Instant::now();
        while ractor::call_t!(w, WorkerMsg::Snapshot, 5000)?.steps.tokens == 0 {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the long challenge never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let killed = Instant::now();
        let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        let held = held.await?;
        let failed = killed.elapsed();
        anyhow::ensure!(
            matches!(held, Ok(Err(BackendError::WorkerGone))),
            "the held challenge should fail with WorkerGone, got {held:?}"
        );
        let answered = loop {
            if let Some(fresh) = door.graph.worker_ref("child").await.filter(|f| f.get_id() != w.get_id()) {
                let req = GenerationRequest::one_turn("back?", 1, Instant::now() + Duration::from_secs(30));
                if generate(&fresh, req).await.is_ok() {
                    break killed.elapsed();
                }
            }
            anyhow::ensure!(killed.elapsed() < Duration::from_secs(300), "the child worker never came back");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let backoff = policy.next_backoff(death).unwrap_or_default();
        println!(
            "  death {}: held challenge failed after {:6.1} ms; first answer after restart {:8.1} ms = backoff {:.0} ms + {:6.1} ms start and load",
            death + 1,
            failed.as_secs_f64() * 1e3,
            answered.as_secs_f64() * 1e3,
            backoff.as_secs_f64() * 1e3,
            answered.saturating_sub(backoff).as_secs_f64() * 1e3
        );
    }
    stop(node).await;
    Ok(())
}
