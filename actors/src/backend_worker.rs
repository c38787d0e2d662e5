//! A backend worker: one inference engine on one device, behind a mailbox.
//!
//! The worker owns an OS thread that owns the engine (model + context); the actor only forwards
//! jobs to that thread and watches it. If the thread dies (a panic inside the engine), the actor
//! fails so that the [`crate::worker_supervisor`] restarts it with a fresh engine. Spawned and
//! linked by the supervisor; receives work from the [`crate::scheduler`].

use std::sync::mpsc;
use std::thread;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::inference::embedded::{load_model, EmbeddedEngine, EmbeddedSpec, ModelInfo};
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

/// Everything a worker needs to (re)start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Stable name ("cpu0", "gpu1"): the label in logs and metrics across restarts.
    pub name: String,
    pub device: Device,
    pub engine: EmbeddedSpec,
}

pub enum WorkerMsg {
    Generate {
        request: GenerationRequest,
        reply: RpcReplyPort<Result<Generation, BackendError>>,
    },
    /// Sent by the engine thread's guard when the thread ends.
    EngineExited { reason: String },
    /// Test hook: makes the actor panic, as an unexpected engine state would. Public because the
    /// integration tests and operators' chaos drills use it; nothing in the node sends it.
    CrashForTest,
}

struct Job {
    request: GenerationRequest,
    reply: RpcReplyPort<Result<Generation, BackendError>>,
}

pub struct BackendWorker;

pub struct WorkerState {
    name: String,
    jobs: mpsc::Sender<Job>,
    pub info: ModelInfo,
}

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

fn engine_thread(
    spec: WorkerSpec,
    worker: ActorRef<WorkerMsg>,
    jobs: mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<ModelInfo, BackendError>>,
) {
    let mut guard = ExitGuard {
        worker,
        clean: false,
    };
    let model = match load_model(&spec.engine) {
        Ok(m) => m,
        Err(e) => {
            guard.clean = true;
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut engine = match EmbeddedEngine::new(&model, &spec.engine) {
        Ok(e) => e,
        Err(e) => {
            guard.clean = true;
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(engine.info()));
    // The loop ends when the actor drops its sender (worker stopped): a clean exit.
    while let Ok(job) = jobs.recv() {
        let result = engine.generate(&job.request);
        let _ = job.reply.send(result);
    }
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
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let name = spec.name.clone();
        thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || engine_thread(spec, myself, jobs_rx, ready_tx))?;
        let info = ready_rx
            .await
            .map_err(|_| BackendError::ModelLoad("engine thread died while loading".into()))??;
        tracing::info!(worker = %name, model = %info.description, n_ctx = info.n_ctx, native_tools = info.native_tools, "backend worker ready");
        Ok(WorkerState {
            name,
            jobs: jobs_tx,
            info,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Generate { request, reply } => {
                if let Err(mpsc::SendError(job)) = state.jobs.send(Job { request, reply }) {
                    let _ = job.reply.send(Err(BackendError::WorkerGone));
                    return Err(format!("worker {}: engine thread is gone", state.name).into());
                }
            }
            WorkerMsg::EngineExited { reason } => {
                return Err(format!("worker {}: {reason}", state.name).into());
            }
            WorkerMsg::CrashForTest => panic!("worker {}: crash requested by a test", state.name),
        }
        Ok(())
    }
}
