//! An embedded engine on a thread of the node: the thread owns the model and the context, runs
//! the continuous-batching loop (`batching.rs`) and writes its counters straight into the
//! worker's [`EngineStats`]. Its crash is the node's, which is why GPU engines run in a child
//! process instead (`process.rs`).

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
#[cfg(feature = "test-hooks")]
use std::time::Duration;

use tokio::sync::oneshot;

use super::batching::{serve, Host, Job};
use super::stats::{now_ms, EngineStats, LiveEngine, ReplyPort, StepMetrics};
use super::OnExit;
use crate::inference::embedded::{load_model, EmbeddedEngine, EmbeddedSpec, ModelInfo, StepStats};
use crate::inference::request::{BackendError, Generation};

/// Tells the actor its engine thread ended, however it ended (including by panic).
struct ExitGuard {
    on_exit: Option<OnExit>,
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
        if let Some(on_exit) = self.on_exit.take() {
            on_exit(reason);
        }
    }
}

/// What an engine thread starts from.
pub(crate) struct EngineThread {
    pub(crate) spec: EmbeddedSpec,
    pub(crate) on_exit: OnExit,
    pub(crate) jobs: mpsc::Receiver<Job<ReplyPort>>,
    pub(crate) ready: oneshot::Sender<Result<ModelInfo, BackendError>>,
    pub(crate) stats: Arc<EngineStats>,
    pub(crate) metrics: StepMetrics,
}

/// The engine thread's body. `_live` is dropped last, once the engine and the model are freed.
pub(crate) fn engine_thread(_live: LiveEngine, args: EngineThread) {
    let EngineThread { spec, on_exit, jobs, ready, stats, metrics } = args;
    let mut guard = ExitGuard { on_exit: Some(on_exit), clean: false };
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
    pub(crate) stats: &'s EngineStats,
    pub(crate) metrics: StepMetrics,
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
