//! A backend worker: one inference engine on one device, behind a mailbox.
//!
//! The worker owns an OS thread that owns the engine (model + context), or a child process that
//! does (see [`crate::workers::host`]), which generates up to `n_parallel` challenges at once by
//! continuous batching; the actor only forwards jobs to it and watches it. If the thread dies (a
//! panic inside the engine), the child dies (an abort, a signal), or a step runs past
//! `stall_after` while work is in flight (a hung decode: the watchdog, `ENGINE_STALL_SECONDS`;
//! a hung child is killed), the actor fails so that the [`crate::workers::supervisor`] restarts it
//! with a fresh engine. Spawned and linked by the supervisor; receives work from the
//! [`crate::scheduler`].

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use super::host::batching::Job;
use super::host::process::{self, ChildArgs, ChildEngine};
use super::host::stats::{now_ms, EngineStats, LiveEngine, ReplyPort, StepMetrics};
use super::host::thread::{engine_thread, EngineThread};
use super::host::OnExit;
use super::spec::{EngineProcess, EngineSpec, WorkerSpec};
use crate::inference::embedded::{ModelInfo, StepStats};
use crate::inference::openai::OpenAiClient;
use crate::inference::request::{BackendError, Generation, GenerationRequest};
use crate::metrics::Metrics;

pub enum WorkerMsg {
    Generate {
        request: GenerationRequest,
        reply: RpcReplyPort<Result<Generation, BackendError>>,
    },
    /// Sent by the engine thread's guard when the thread ends, or by a child's host thread when
    /// the child dies.
    EngineExited {
        reason: String,
    },
    Snapshot(RpcReplyPort<WorkerSnapshot>),
    /// Periodic (and after a failed request) check that a remote server still answers.
    HealthCheck,
    HealthResult(Result<(), BackendError>),
    /// Periodic check that the engine thread's current step has not stalled (embedded workers).
    CheckStall,
    /// Test hook: makes the actor panic, as an unexpected engine state would. Compiled only with
    /// the `test-hooks` feature (the tests and `loosh-bench recovery`); nothing in the node sends it.
    #[cfg(feature = "test-hooks")]
    CrashForTest,
    /// Test hook: the engine thread stops making progress at its next step while work is in
    /// flight, as a hung decode would, until this worker actor is gone. Exercises the watchdog.
    #[cfg(feature = "test-hooks")]
    StallForTest,
    /// Test hook: every job this worker gets from now on reaches its engine this much later, as
    /// on a device slow to start (a long prefill ahead, throttling). Exercises hedging.
    #[cfg(feature = "test-hooks")]
    SlowFirstTokenForTest(Duration),
    /// Test hook: an engine child process calls `abort()` at its next step with work in flight,
    /// as llama.cpp does on a CUDA error. Ignored (logged) by an engine on a thread: there it
    /// would end the node.
    #[cfg(feature = "test-hooks")]
    AbortEngineForTest,
}

/// What a worker has done, for tests, `/health` and the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSnapshot {
    pub served: u64,
    pub active: usize,
    /// Most sequences ever generated at once (continuous batching at work when > 1).
    pub peak_active: usize,
    pub n_parallel: usize,
    /// Where an embedded engine's time went (zero for remote servers).
    pub steps: StepStats,
    /// The engine child process, when the engine runs in one.
    pub engine_pid: Option<u32>,
}

/// The slow-first-token test hook: with a delay, `job` reaches the engine that much later (or is
/// answered `Cancelled` if its challenge is cancelled meanwhile) and None is returned; without,
/// the job is handed back to be sent now.
#[cfg(feature = "test-hooks")]
fn held_back(jobs: &mpsc::Sender<Job<ReplyPort>>, job: Job<ReplyPort>, delay: Duration) -> Option<Job<ReplyPort>> {
    if delay.is_zero() {
        return Some(job);
    }
    let jobs = jobs.clone();
    let control = job.request.control.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(delay) => {
                let _ = jobs.send(job);
            }
            // Cancelled while held back: the sequence was never taken.
            () = control.wait_cancelled() => {
                let _ = job.reply.send(Err(BackendError::Cancelled));
            }
        }
    });
    None
}

pub struct BackendWorker;

/// The running engine behind a worker.
enum Engine {
    /// Jobs go to the engine's own thread.
    Embedded { jobs: mpsc::Sender<Job<ReplyPort>> },
    /// Jobs go to the engine's own process.
    Child(ChildEngine),
    /// Jobs run as tasks against the server.
    OpenAi { client: OpenAiClient },
}

pub struct WorkerState {
    name: String,
    engine: Engine,
    n_parallel: usize,
    stats: Arc<EngineStats>,
    health_failures: u32,
    /// How long one engine step may run while work is in flight before the worker is failed.
    stall_after: Duration,
    /// `loosh_engine_stalls_total` for this worker.
    stalls: prometheus::IntCounter,
    /// Turned true by the watchdog: every job the hung engine holds is answered `WorkerGone` at
    /// once (the scheduler re-dispatches it to a sibling when the deadline leaves room).
    stalled: tokio::sync::watch::Sender<bool>,
    /// Lets a test-stalled engine thread go once this actor is gone, so a test leaks no thread.
    #[cfg(feature = "test-hooks")]
    _release_stall: ReleaseStall,
    /// Set by [`WorkerMsg::SlowFirstTokenForTest`].
    #[cfg(feature = "test-hooks")]
    first_token_delay: Duration,
}

/// Ends a [`WorkerMsg::StallForTest`] stall when the worker's state is dropped (the actor stopped).
#[cfg(feature = "test-hooks")]
struct ReleaseStall(Arc<EngineStats>);

#[cfg(feature = "test-hooks")]
impl Drop for ReleaseStall {
    fn drop(&mut self) {
        self.0.stall_for_test.store(false, Ordering::Relaxed);
    }
}

/// The callback a host calls when its engine ends unexpectedly: the worker hears of it in its
/// mailbox, and fails, so that its supervisor restarts it.
fn on_exit(worker: &ActorRef<WorkerMsg>) -> OnExit {
    let worker = worker.clone();
    Box::new(move |reason| {
        let _ = worker.cast(WorkerMsg::EngineExited { reason });
    })
}

/// How often a worker looks at its engine's step clock: often enough to notice a stall soon after
/// `stall_after`, rarely enough to cost nothing.
fn stall_check_every(stall_after: Duration) -> Duration {
    (stall_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Consecutive failed health checks after which a remote worker restarts (and re-probes with backoff).
const MAX_HEALTH_FAILURES: u32 = 2;

impl Actor for BackendWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    /// The worker's spec, and the node's metrics (for the engine's step times).
    type Arguments = (WorkerSpec, Arc<Metrics>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (spec, metrics): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let name = spec.name.clone();
        let mut n_parallel = spec.parallel();
        let stats = Arc::new(EngineStats::default());
        let mut stall_after = Duration::MAX;
        let engine = match (spec.engine, spec.process) {
            (EngineSpec::Embedded(engine_spec), EngineProcess::Child { exe }) => {
                stall_after = engine_spec.stall_after;
                let exe = match exe {
                    Some(exe) => exe,
                    None => std::env::current_exe()
                        .map_err(|e| BackendError::ModelLoad(format!("cannot find this executable: {e}")))?,
                };
                let (child, info) = process::start(ChildArgs {
                    name: name.clone(),
                    spec: engine_spec,
                    exe,
                    on_exit: on_exit(&myself),
                    stats: stats.clone(),
                    metrics: StepMetrics::new(&metrics, &name),
                    exits: metrics.engine_process_exits.clone(),
                })
                .await?;
                tracing::info!(
                    worker = %name, pid = child.pid(), model = %info.description, n_ctx = info.n_ctx, n_parallel = info.n_parallel,
                    sizing = %info.sizing, native_tools = info.native_tools, "embedded worker ready in its own process"
                );
                n_parallel = info.n_parallel;
                myself.send_interval(stall_check_every(stall_after), || WorkerMsg::CheckStall);
                Engine::Child(child)
            }
            (EngineSpec::Embedded(engine_spec), EngineProcess::Thread) => {
                stall_after = engine_spec.stall_after;
                let (jobs_tx, jobs_rx) = mpsc::channel();
                let (ready_tx, ready_rx) = oneshot::channel();
                let args = EngineThread {
                    spec: engine_spec,
                    on_exit: on_exit(&myself),
                    jobs: jobs_rx,
                    ready: ready_tx,
                    stats: stats.clone(),
                    metrics: StepMetrics::new(&metrics, &name),
                };
                let live = LiveEngine::new();
                thread::Builder::new().name(format!("engine-{name}")).spawn(move || engine_thread(live, args))?;
                let info: ModelInfo = ready_rx
                    .await
                    .map_err(|_| BackendError::ModelLoad("engine thread died while loading".into()))??;
                tracing::info!(
                    worker = %name, model = %info.description, n_ctx = info.n_ctx, n_parallel = info.n_parallel,
                    sizing = %info.sizing, native_tools = info.native_tools, "embedded worker ready"
                );
                n_parallel = info.n_parallel;
                myself.send_interval(stall_check_every(stall_after), || WorkerMsg::CheckStall);
                Engine::Embedded { jobs: jobs_tx }
            }
            (EngineSpec::OpenAi(api_spec), _) => {
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
        let stalls = metrics.engine_stalls.with_label_values(&[&name]);
        Ok(WorkerState {
            name,
            engine,
            n_parallel,
            #[cfg(feature = "test-hooks")]
            _release_stall: ReleaseStall(stats.clone()),
            #[cfg(feature = "test-hooks")]
            first_token_delay: Duration::ZERO,
            stats,
            health_failures: 0,
            stall_after,
            stalls,
            stalled: tokio::sync::watch::Sender::new(false),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Generate { request, reply } => match &state.engine {
                Engine::Embedded { .. } | Engine::Child(_) => {
                    let (done, result) = oneshot::channel();
                    let sent = match &state.engine {
                        Engine::Embedded { jobs } => {
                            let job = Some(Job { request, reply: done });
                            #[cfg(feature = "test-hooks")]
                            let job = job.and_then(|job| held_back(jobs, job, state.first_token_delay));
                            job.is_none_or(|job| jobs.send(job).is_ok())
                        }
                        // The slow-first-token hook holds jobs back only on engines in the node.
                        Engine::Child(child) => child.submit(request, done).is_ok(),
                        Engine::OpenAi { .. } => unreachable!(),
                    };
                    if !sent {
                        let _ = reply.send(Err(BackendError::WorkerGone));
                        return Err(format!("worker {}: engine is gone", state.name).into());
                    }
                    let mut stalled = state.stalled.subscribe();
                    tokio::spawn(async move {
                        // Only a stall ends the wait early. A crashed actor (the watch closed) leaves
                        // a healthy engine thread that still answers its jobs.
                        let stall = async {
                            if stalled.wait_for(|s| *s).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        };
                        let result = tokio::select! {
                            biased;
                            () = stall => Err(BackendError::WorkerGone),
                            r = result => r.unwrap_or(Err(BackendError::WorkerGone)),
                        };
                        let _ = reply.send(result);
                    });
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
                    steps: *state.stats.steps.lock().unwrap_or_else(|e| e.into_inner()),
                    engine_pid: match &state.engine {
                        Engine::Child(child) => Some(child.pid()),
                        _ => None,
                    },
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
            WorkerMsg::CheckStall => {
                let started = state.stats.step_started_ms.load(Ordering::Relaxed);
                let stalled = Duration::from_millis(now_ms().saturating_sub(started));
                if started != 0 && stalled > state.stall_after {
                    // The thread cannot be killed; failing the actor drops its job queue, and the
                    // supervisor starts a fresh engine beside it. The challenges the hung step
                    // holds are answered WorkerGone now, as a dead worker's are.
                    state.stalled.send_replace(true);
                    state.stalls.inc();
                    if let Engine::Child(child) = &state.engine {
                        // Unlike a thread, a hung process can be ended, and its memory with it.
                        child.kill();
                    }
                    tracing::error!(worker = %state.name, stalled_s = stalled.as_secs_f64(), limit_s = state.stall_after.as_secs_f64(),
                        "engine step stalled (ENGINE_STALL_SECONDS); failing the worker so that it restarts");
                    return Err(format!(
                        "worker {}: engine step stalled for {:.1} s (limit {:.1} s)",
                        state.name,
                        stalled.as_secs_f64(),
                        state.stall_after.as_secs_f64()
                    )
                    .into());
                }
            }
            #[cfg(feature = "test-hooks")]
            WorkerMsg::CrashForTest => panic!("worker {}: crash requested by a test", state.name),
            #[cfg(feature = "test-hooks")]
            WorkerMsg::StallForTest => match &state.engine {
                Engine::Child(child) => child.hook(super::host::frame::ToEngine::StallForTest),
                _ => state.stats.stall_for_test.store(true, Ordering::Relaxed),
            },
            #[cfg(feature = "test-hooks")]
            WorkerMsg::AbortEngineForTest => match &state.engine {
                Engine::Child(child) => child.hook(super::host::frame::ToEngine::AbortForTest),
                _ => tracing::warn!(worker = %state.name, "abort hook ignored: this engine runs in the node's process"),
            },
            #[cfg(feature = "test-hooks")]
            WorkerMsg::SlowFirstTokenForTest(delay) => state.first_token_delay = delay,
        }
        Ok(())
    }
}
