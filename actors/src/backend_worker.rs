//! A backend worker: one inference engine on one device, behind a mailbox.
//!
//! The worker owns an OS thread that owns the engine (model + context) and generates up to
//! `n_parallel` challenges at once by continuous batching; the actor only forwards jobs to that
//! thread and watches it. If the thread dies (a panic inside the engine), the actor
//! fails so that the [`crate::worker_supervisor`] restarts it with a fresh engine. Spawned and
//! linked by the supervisor; receives work from the [`crate::scheduler`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::inference::embedded::{load_model, EmbeddedEngine, EmbeddedSpec, ModelInfo};
use crate::inference::openai::{OpenAiClient, OpenAiSpec};
use crate::inference::request::{BackendError, Generation, GenerationRequest};

/// Which device a worker is bound to, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Gpu(i) => write!(f, "gpu{i}"),
        }
    }
}

/// Which engine a worker runs.
#[derive(Debug, Clone)]
pub enum EngineSpec {
    /// llama.cpp in process, on this worker's device.
    Embedded(EmbeddedSpec),
    /// An OpenAI-compatible server, local or remote.
    OpenAi(OpenAiSpec),
}

/// Everything a worker needs to (re)start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Stable name ("cpu0", "gpu1", "vllm0"): the label in logs and metrics across restarts.
    pub name: String,
    pub device: Device,
    pub engine: EngineSpec,
}

impl WorkerSpec {
    /// Challenges this worker generates at once.
    pub fn parallel(&self) -> usize {
        match &self.engine {
            EngineSpec::Embedded(e) => e.n_parallel.max(1) as usize,
            EngineSpec::OpenAi(o) => o.n_parallel.max(1) as usize,
        }
    }
}

pub enum WorkerMsg {
    Generate {
        request: GenerationRequest,
        reply: RpcReplyPort<Result<Generation, BackendError>>,
    },
    /// Sent by the engine thread's guard when the thread ends.
    EngineExited {
        reason: String,
    },
    Snapshot(RpcReplyPort<WorkerSnapshot>),
    /// Periodic (and after a failed request) check that a remote server still answers.
    HealthCheck,
    HealthResult(Result<(), BackendError>),
    /// Test hook: makes the actor panic, as an unexpected engine state would. Public because the
    /// integration tests and operators' chaos drills use it; nothing in the node sends it.
    CrashForTest,
}

type ReplyPort = RpcReplyPort<Result<Generation, BackendError>>;

struct Job {
    request: GenerationRequest,
    reply: ReplyPort,
}

/// What a worker has done, for tests, `/health` and the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSnapshot {
    pub served: u64,
    pub active: usize,
    /// Most sequences ever generated at once (continuous batching at work when > 1).
    pub peak_active: usize,
    pub n_parallel: usize,
}

pub struct BackendWorker;

/// The running engine behind a worker.
enum Engine {
    /// Jobs go to the engine's own thread.
    Embedded { jobs: mpsc::Sender<Job> },
    /// Jobs run as tasks against the server.
    OpenAi { client: OpenAiClient },
}

pub struct WorkerState {
    name: String,
    engine: Engine,
    n_parallel: usize,
    stats: Arc<EngineStats>,
    health_failures: u32,
}

/// Consecutive failed health checks after which a remote worker restarts (and re-probes with backoff).
const MAX_HEALTH_FAILURES: u32 = 2;

/// Tells the actor its engine thread ended, however it ended (including by panic).
struct ExitGuard {
    worker: ActorRef<WorkerMsg>,
    clean: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let reason = if thread::panicking() {
            "engine thread panicked".to_string()
        } else if self.clean {
            return;
        } else {
            "engine thread ended".to_string()
        };
        let _ = self.worker.cast(WorkerMsg::EngineExited { reason });
    }
}

/// Counters the engine thread keeps for the actor's snapshot.
#[derive(Default)]
struct EngineStats {
    served: AtomicU64,
    active: AtomicUsize,
    peak_active: AtomicUsize,
}

fn engine_thread(
    spec: EmbeddedSpec,
    worker: ActorRef<WorkerMsg>,
    jobs: mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<ModelInfo, BackendError>>,
    stats: Arc<EngineStats>,
) {
    let mut guard = ExitGuard { worker, clean: false };
    let model = match load_model(&spec) {
        Ok(m) => m,
        Err(e) => {
            guard.clean = true;
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut engine: EmbeddedEngine<'_, ReplyPort> = match EmbeddedEngine::new(&model, &spec) {
        Ok(e) => e,
        Err(e) => {
            guard.clean = true;
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(engine.info()));
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut open = true;
    loop {
        // Idle: block for work. Busy: pick up whatever arrived without waiting.
        if engine.active() == 0 && waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => break,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        while engine.has_free_slot() {
            let Some(job) = waiting.pop_front() else { break };
            if let Err((reply, e)) = engine.admit(job.request, job.reply) {
                let _ = reply.send(Err(e));
            }
        }
        let active = engine.active();
        stats.active.store(active, Ordering::Relaxed);
        stats.peak_active.fetch_max(active, Ordering::Relaxed);
        for (reply, result) in engine.step() {
            stats.served.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(result);
        }
        if !open && engine.active() == 0 && waiting.is_empty() {
            break;
        }
    }
    stats.active.store(0, Ordering::Relaxed);
    // The actor dropped its sender (worker stopped): a clean exit.
    guard.clean = true;
}

impl Actor for BackendWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        spec: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let name = spec.name.clone();
        let n_parallel = spec.parallel();
        let stats = Arc::new(EngineStats::default());
        let engine = match spec.engine {
            EngineSpec::Embedded(engine_spec) => {
                let (jobs_tx, jobs_rx) = mpsc::channel();
                let (ready_tx, ready_rx) = oneshot::channel();
                let thread_stats = stats.clone();
                thread::Builder::new()
                    .name(format!("engine-{name}"))
                    .spawn(move || engine_thread(engine_spec, myself, jobs_rx, ready_tx, thread_stats))?;
                let info: ModelInfo = ready_rx
                    .await
                    .map_err(|_| BackendError::ModelLoad("engine thread died while loading".into()))??;
                tracing::info!(
                    worker = %name, model = %info.description, n_ctx = info.n_ctx, n_parallel = info.n_parallel,
                    native_tools = info.native_tools, "embedded worker ready"
                );
                Engine::Embedded { jobs: jobs_tx }
            }
            EngineSpec::OpenAi(api_spec) => {
                let client = OpenAiClient::new(api_spec)?;
                // A worker is ready only once its server answers.
                let models = client.health().await?;
                let spec = client.spec();
                if !models.is_empty() && !models.iter().any(|m| m == &spec.model) {
                    tracing::warn!(worker = %name, model = %spec.model, served = ?models, "the server does not list the configured model");
                }
                tracing::info!(worker = %name, url = %spec.base_url, model = %spec.model, n_parallel, "OpenAI-compatible worker ready");
                myself.send_interval(spec.health_every, || WorkerMsg::HealthCheck);
                Engine::OpenAi { client }
            }
        };
        Ok(WorkerState { name, engine, n_parallel, stats, health_failures: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Generate { request, reply } => match &state.engine {
                Engine::Embedded { jobs } => {
                    if let Err(mpsc::SendError(job)) = jobs.send(Job { request, reply }) {
                        let _ = job.reply.send(Err(BackendError::WorkerGone));
                        return Err(format!("worker {}: engine thread is gone", state.name).into());
                    }
                }
                Engine::OpenAi { client } => {
                    let (client, stats, me) = (client.clone(), state.stats.clone(), myself.clone());
                    tokio::spawn(async move {
                        let active = stats.active.fetch_add(1, Ordering::Relaxed) + 1;
                        stats.peak_active.fetch_max(active, Ordering::Relaxed);
                        let result = client.chat(&request).await;
                        stats.active.fetch_sub(1, Ordering::Relaxed);
                        stats.served.fetch_add(1, Ordering::Relaxed);
                        if matches!(result, Err(BackendError::Unreachable(_))) {
                            // Find out now whether the server is gone, not at the next tick.
                            let _ = me.cast(WorkerMsg::HealthCheck);
                        }
                        let _ = reply.send(result);
                    });
                }
            },
            WorkerMsg::Snapshot(reply) => {
                let _ = reply.send(WorkerSnapshot {
                    served: state.stats.served.load(Ordering::Relaxed),
                    active: state.stats.active.load(Ordering::Relaxed),
                    peak_active: state.stats.peak_active.load(Ordering::Relaxed),
                    n_parallel: state.n_parallel,
                });
            }
            WorkerMsg::HealthCheck => {
                // A request streaming from the server already shows it alive, and a probe then can
                // do harm: llama-cpp-python's server (interrupt_requests, its default) ends the
                // stream in progress as soon as another request, a probe included, waits for the
                // model. A dead server still shows: the stream breaks, and the next probe fails.
                if state.stats.active.load(Ordering::Relaxed) > 0 {
                    return Ok(());
                }
                if let Engine::OpenAi { client } = &state.engine {
                    let (client, me) = (client.clone(), myself.clone());
                    tokio::spawn(async move {
                        let result = client.health().await.map(|_| ());
                        let _ = me.cast(WorkerMsg::HealthResult(result));
                    });
                }
            }
            WorkerMsg::HealthResult(Ok(())) => state.health_failures = 0,
            WorkerMsg::HealthResult(Err(e)) => {
                state.health_failures += 1;
                tracing::warn!(worker = %state.name, error = %e, failures = state.health_failures, "backend server health check failed");
                if state.health_failures >= MAX_HEALTH_FAILURES {
                    return Err(format!("worker {}: server stopped answering: {e}", state.name).into());
                }
                let _ = myself.cast(WorkerMsg::HealthCheck);
            }
            WorkerMsg::EngineExited { reason } => {
                return Err(format!("worker {}: {reason}", state.name).into());
            }
            WorkerMsg::CrashForTest => panic!("worker {}: crash requested by a test", state.name),
        }
        Ok(())
    }
}
