//! What an engine's host (a thread, or the thread that feeds a child process) reports to its
//! worker: the counters behind a worker's snapshot and watchdog, the step-time series in
//! `/metrics`, and the process-wide count of live engines that shutdown waits on.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::inference::embedded::StepStats;
use crate::inference::request::{BackendError, Generation};
use crate::metrics::Metrics;

/// Where the engine thread puts one job's result: a task of the actor's forwards it to the
/// scheduler's reply port, or answers `WorkerGone` first if the watchdog finds the engine stalled.
pub(crate) type ReplyPort = oneshot::Sender<Result<Generation, BackendError>>;

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

/// Milliseconds since the first call in this process, never 0 (0 means "not in a step").
pub(crate) fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
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
    pub(crate) stall_for_test: std::sync::atomic::AtomicBool,
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
    pub(crate) fn new(metrics: &Metrics, worker: &str) -> Self {
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
