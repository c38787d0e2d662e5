//! The miner under test: a node started from an operator's kind of configuration (variables, as
//! in `.env`), reached through its HTTP port and its front door, and stopped the one way a node
//! stops.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use loosh_actors::front_door::{FrontDoor, ValidatorAuth};
use loosh_actors::inference::embedded::StepStats;
use loosh_actors::settings::Hotkey;
use loosh_actors::workers::worker::WorkerMsg;
use loosh_miner::config::workers::worker_specs;
use loosh_miner::config::{Config, Source};
use loosh_miner::node::{Node, NodeParts};

pub(crate) fn bench_config(model: &Path, threads: i32, in_flight: usize) -> anyhow::Result<Config> {
    bench_config_with(model, threads, in_flight, &[])
}

/// A node configuration for benchmarks: this model, these threads, plus `extra` variables.
pub(crate) fn bench_config_with(
    model: &Path,
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

/// Starts a node as `loosh-miner` starts one (HTTP on a free local port) and waits until its
/// workers are ready; the benchmarks then reach it through its port (`node.addr`) and its front
/// door (`node.door`).
pub(crate) async fn start(cfg: &Config) -> anyhow::Result<Node> {
    start_with_auth(cfg, Arc::new(ValidatorAuth::allow_all())).await
}

/// [`start`] admitting only whom `auth` allows.
pub(crate) async fn start_with_auth(cfg: &Config, auth: Arc<ValidatorAuth>) -> anyhow::Result<Node> {
    let specs = worker_specs(cfg, &[])?;
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.door.status_now().ready_workers < want {
        anyhow::ensure!(Instant::now() < deadline, "the worker did not become ready: {:?}", node.door.workers().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(node)
}

/// Stops the node the one way a node stops ([`Node::stop`], which also waits for the engines to
/// free their models: the next level of a benchmark needs the memory, and a GPU model freed at
/// process exit aborts it).
pub(crate) async fn stop(node: Node) {
    if !node.stop().await {
        eprintln!("warning: an engine still held its model when the node had stopped; the next figures may be low");
    }
}

/// Where one worker's step time went, from its snapshot: the engine's own split, which no client
/// sees, so this reads past the door to the worker.
pub(crate) async fn step_stats(door: &FrontDoor, worker: &str) -> StepStats {
    match door.graph.worker_ref(worker).await {
        Some(w) => ractor::call_t!(w, WorkerMsg::Snapshot, 5000).map(|s| s.steps).unwrap_or_default(),
        None => StepStats::default(),
    }
}
