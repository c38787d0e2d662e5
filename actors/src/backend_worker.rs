//! A backend worker: one inference engine on one device, behind a mailbox.
//!
//! The worker owns an OS thread that owns the engine (model + context), or a child process that
//! does (see [`crate::engine_host`]), which generates up to `n_parallel` challenges at once by
//! continuous batching; the actor only forwards jobs to it and watches it. If the thread dies (a
//! panic inside the engine), the child dies (an abort, a signal), or a step runs past
//! `stall_after` while work is in flight (a hung decode: the watchdog, `ENGINE_STALL_SECONDS`;
//! a hung child is killed), the actor fails so that the [`crate::worker_supervisor`] restarts it
//! with a fresh engine. Spawned and linked by the supervisor; receives work from the
//! [`crate::scheduler`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::engine_host::batching::{serve, Host, Job};
use crate::engine_host::process::{self, ChildArgs, ChildEngine};
use crate::engine_host::EngineProcess;
use crate::inference::embedded::{load_model, EmbeddedEngine, EmbeddedSpec, ModelInfo, StepStats};
use crate::inference::openai::{OpenAiClient, OpenAiSpec};
use crate::inference::request::{BackendError, Generation, GenerationRequest};
use crate::metrics::Metrics;

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
#[derive(Debug, Clone, PartialEq)]
pub enum EngineSpec {
    /// llama.cpp in process, on this worker's device.
    Embedded(EmbeddedSpec),
    /// An OpenAI-compatible server, local or remote.
    OpenAi(OpenAiSpec),
}

/// Everything a worker needs to (re)start. Equal specs make the same worker: a reload keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// Stable name ("cpu0", "gpu1", "vllm0"): the label in logs and metrics across restarts.
    pub name: String,
    pub device: Device,
    pub engine: EngineSpec,
    /// Where an embedded engine runs (ignored for OpenAI-compatible servers).
    pub process: EngineProcess,
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
    /// the `test-hooks` feature (the tests and `bench recovery`); nothing in the node sends it.
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

/// Where the engine thread puts one job's result: a task of the actor's forwards it to the
/// scheduler's reply port, or answers `WorkerGone` first if the watchdog finds the engine stalled.
pub(crate) type ReplyPort = oneshot::Sender<Result<Generation, BackendError>>;

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

/// Embedded engine threads still running, process-wide. A GPU engine must free its context and
/// model before the process exits: freed after the CUDA driver has shut down, they abort the
/// process (exit code 134) instead of a clean exit.
static LIVE_ENGINES: Mutex<usize> = Mutex::new(0);
static ENGINE_ENDED: Condvar = Condvar::new();

/// Counts one engine thread (or child process host) for [`wait_for_engines`]; dropped last on
/// that thread, after the engine and the model are freed (the child reaped).
pub(crate) struct LiveEngine;

impl LiveEngine {
    pub(crate) fn new() -> Self {
        *LIVE_ENGINES.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        LiveEngine
    }
}

impl Drop for LiveEngine {
    fn drop(&mut self) {
        *LIVE_ENGINES.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        ENGINE_ENDED.notify_all();
    }
}

/// Waits until every embedded engine thread has finished its sequences and freed its model, and
/// every engine child process has done so and exited (their workers stopped: the graph is
/// stopping), at most `timeout`. Returns whether they all did. Call before the process exits.
pub fn wait_for_engines(timeout: Duration) -> bool {
    let live = LIVE_ENGINES.lock().unwrap_or_else(|e| e.into_inner());
    let (live, _) = ENGINE_ENDED.wait_timeout_while(live, timeout, |n| *n > 0).unwrap_or_else(|e| e.into_inner());
    *live == 0
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

/// Milliseconds since the first call in this process, never 0 (0 means "not in a step").
pub(crate) fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// How often a worker looks at its engine's step clock: often enough to notice a stall soon after
/// `stall_after`, rarely enough to cost nothing.
fn stall_check_every(stall_after: Duration) -> Duration {
    (stall_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
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
pub(crate) struct EngineStats {
    pub(crate) served: AtomicU64,
    pub(crate) active: AtomicUsize,
    pub(crate) peak_active: AtomicUsize,
    pub(crate) steps: Mutex<StepStats>,
    /// [`now_ms`] when the engine thread began its current admit-and-step round with work in
    /// flight (a child: when it last reported progress with work in flight); 0 between rounds
    /// and while idle. The actor's watchdog reads it.
    pub(crate) step_started_ms: AtomicU64,
    #[cfg(feature = "test-hooks")]
    stall_for_test: std::sync::atomic::AtomicBool,
}

/// One worker's step-time series in `/metrics`, resolved once.
pub(crate) struct StepMetrics {
    decode: prometheus::Counter,
    sampling: prometheus::Counter,
    rest: prometheus::Counter,
    steps: prometheus::IntCounter,
    tokens: prometheus::IntCounter,
    reused: prometheus::IntCounter,
    tokens_per_second: prometheus::Gauge,
    /// The engine's figures when last published, and the start of the tokens/s window.
    published: StepStats,
    window: (Instant, u64),
}

impl StepMetrics {
    fn new(metrics: &Metrics, worker: &str) -> Self {
        let phase = |p| metrics.engine_step_seconds.with_label_values(&[worker, p]);
        StepMetrics {
            decode: phase("decode"),
            sampling: phase("sampling"),
            rest: phase("rest"),
            steps: metrics.engine_steps.with_label_values(&[worker]),
            tokens: metrics.engine_tokens.with_label_values(&[worker]),
            reused: metrics.engine_reused_prompt_tokens.with_label_values(&[worker]),
            tokens_per_second: metrics.engine_tokens_per_second.with_label_values(&[worker]),
            published: StepStats::default(),
            window: (Instant::now(), 0),
        }
    }

    pub(crate) fn publish(&mut self, now: StepStats, idle: bool) {
        let d = now.since(&self.published);
        self.published = now;
        self.decode.inc_by(d.decode.as_secs_f64());
        self.sampling.inc_by(d.sampling.as_secs_f64());
        self.rest.inc_by(d.rest.as_secs_f64());
        self.steps.inc_by(d.steps);
        self.tokens.inc_by(d.tokens);
        self.reused.inc_by(d.reused_prompt_tokens);
        let elapsed = self.window.0.elapsed();
        if idle {
            self.tokens_per_second.set(0.0);
            self.window = (Instant::now(), now.tokens);
        } else if elapsed >= Duration::from_secs(1) {
            self.tokens_per_second.set((now.tokens - self.window.1) as f64 / elapsed.as_secs_f64());
            self.window = (Instant::now(), now.tokens);
        }
    }
}

struct EngineThread {
    spec: EmbeddedSpec,
    worker: ActorRef<WorkerMsg>,
    jobs: mpsc::Receiver<Job<ReplyPort>>,
    ready: oneshot::Sender<Result<ModelInfo, BackendError>>,
    stats: Arc<EngineStats>,
    metrics: StepMetrics,
}

/// The engine thread's body. `_live` is dropped last, once the engine and the model are freed.
fn engine_thread(_live: LiveEngine, args: EngineThread) {
    let EngineThread { spec, worker, jobs, ready, stats, metrics } = args;
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
    serve(&mut engine, &jobs, &mut ThreadHost { stats: &stats, metrics });
    stats.active.store(0, Ordering::Relaxed);
    // The actor dropped its sender (worker stopped): a clean exit.
    guard.clean = true;
}

/// An engine on a thread of the node: counters straight into the actor's [`EngineStats`].
struct ThreadHost<'s> {
    stats: &'s EngineStats,
    metrics: StepMetrics,
}

impl Host<ReplyPort> for ThreadHost<'_> {
    fn round_starting(&mut self) {
        self.stats.step_started_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn admitted(&mut self, active: usize) {
        self.stats.active.store(active, Ordering::Relaxed);
        self.stats.peak_active.fetch_max(active, Ordering::Relaxed);
        #[cfg(feature = "test-hooks")]
        while active > 0 && self.stats.stall_for_test.load(Ordering::Relaxed) {
            // A hung decode, as far as the watchdog can tell; released when the actor is gone.
            thread::park_timeout(Duration::from_millis(20));
        }
    }

    fn stepped(&mut self, now: StepStats, active: usize, idle: bool, finished: usize) {
        self.stats.step_started_ms.store(0, Ordering::Relaxed);
        // After the step: finished sequences no longer count (a reload waits for 0 to retire it).
        self.stats.active.store(active, Ordering::Relaxed);
        *self.stats.steps.lock().unwrap_or_else(|e| e.into_inner()) = now;
        self.metrics.publish(now, idle);
        self.stats.served.fetch_add(finished as u64, Ordering::Relaxed);
    }

    fn answer(&mut self, reply: ReplyPort, result: Result<Generation, BackendError>) {
        let _ = reply.send(result);
    }
}

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
                    worker: myself.clone(),
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
                    worker: myself.clone(),
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
                Engine::Child(child) => child.hook(crate::engine_host::frame::ToEngine::StallForTest),
                _ => state.stats.stall_for_test.store(true, Ordering::Relaxed),
            },
            #[cfg(feature = "test-hooks")]
            WorkerMsg::AbortEngineForTest => match &state.engine {
                Engine::Child(child) => child.hook(crate::engine_host::frame::ToEngine::AbortForTest),
                _ => tracing::warn!(worker = %state.name, "abort hook ignored: this engine runs in the node's process"),
            },
            #[cfg(feature = "test-hooks")]
            WorkerMsg::SlowFirstTokenForTest(delay) => state.first_token_delay = delay,
        }
        Ok(())
    }
}
