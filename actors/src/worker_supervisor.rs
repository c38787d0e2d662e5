//! The worker supervisor: starts one backend worker per configured device, restarts failed ones
//! with exponential backoff, and gives up on a worker that crashes too often.
//!
//! Erlang-style: a worker that hits an unexpected state crashes; the supervisor restarts it with
//! fresh state unless it has crashed `max_restarts` times within `within`, in which case the worker
//! stays down and `/metrics` (`loosh_worker_down`) and the logs say why. It keeps the scheduler's
//! view of ready workers current. Other workers never notice a sibling's crash.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::backend_worker::{BackendWorker, WorkerMsg, WorkerSpec};
use crate::metrics::Metrics;
use crate::scheduler::SchedulerMsg;

/// Restart policy, as data: at most `max_restarts` within `within`, waiting `backoff_initial`
/// doubled per recent restart up to `backoff_max`.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub within: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    /// Ten restarts in ten minutes, waiting 1 s, 2 s, 4 s ... up to a minute: a remote server that
    /// takes a few minutes to reload its model is waited for; a worker that crashes on every start
    /// is given up on after about five minutes.
    fn default() -> Self {
        Self {
            max_restarts: 10,
            within: Duration::from_secs(600),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The wait before the next start, given how many restarts happened in the window; `None`
    /// when the intensity limit is reached.
    pub fn next_backoff(&self, recent_restarts: usize) -> Option<Duration> {
        if recent_restarts >= self.max_restarts {
            return None;
        }
        let factor = 1u32.checked_shl(recent_restarts as u32).unwrap_or(u32::MAX);
        Some(self.backoff_initial.saturating_mul(factor).min(self.backoff_max))
    }
}

/// Where one worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerPhase {
    Starting,
    Ready,
    Restarting { after_failure: String },
    Down { reason: String },
}

#[derive(Debug, Clone)]
pub struct WorkerStatus {
    pub name: String,
    pub phase: WorkerPhase,
    pub restarts: u64,
}

pub enum SupervisorMsg {
    /// Start (or restart) the worker at this index.
    Start(usize),
    /// A start attempt finished.
    Started {
        index: usize,
        /// The worker and the sequences it runs at once (an engine may size itself).
        result: Result<(ActorRef<WorkerMsg>, usize), String>,
    },
    Status(RpcReplyPort<Vec<WorkerStatus>>),
    /// The worker's actor, for tests that need to poke one.
    WorkerRef {
        name: String,
        reply: RpcReplyPort<Option<ActorRef<WorkerMsg>>>,
    },
    /// Test hook: makes the supervisor itself panic, so the root's restart of it can be exercised.
    #[cfg(feature = "test-hooks")]
    CrashForTest,
}

pub struct WorkerSupervisor;

pub struct SupervisorArgs {
    pub specs: Vec<WorkerSpec>,
    pub policy: RestartPolicy,
    pub scheduler: ActorRef<SchedulerMsg>,
    pub metrics: Arc<Metrics>,
}

struct Child {
    spec: WorkerSpec,
    actor: Option<ActorRef<WorkerMsg>>,
    phase: WorkerPhase,
    recent: VecDeque<Instant>,
    restarts: u64,
}

pub struct SupervisorState {
    children: Vec<Child>,
    by_actor: HashMap<ActorId, usize>,
    policy: RestartPolicy,
    scheduler: ActorRef<SchedulerMsg>,
    metrics: Arc<Metrics>,
}

impl SupervisorState {
    fn failed(&mut self, myself: &ActorRef<SupervisorMsg>, index: usize, reason: String) {
        let now = Instant::now();
        let policy = self.policy.clone();
        let child = &mut self.children[index];
        child.actor = None;
        self.scheduler.cast(SchedulerMsg::WorkerDown { name: child.spec.name.clone() }).ok();
        while child.recent.front().is_some_and(|t| now.duration_since(*t) > policy.within) {
            child.recent.pop_front();
        }
        match policy.next_backoff(child.recent.len()) {
            Some(backoff) => {
                child.recent.push_back(now);
                child.restarts += 1;
                self.metrics.worker_restarts.with_label_values(&[&child.spec.name]).inc();
                tracing::warn!(worker = %child.spec.name, %reason, backoff_ms = backoff.as_millis() as u64, "worker failed; restarting");
                child.phase = WorkerPhase::Restarting { after_failure: reason };
                myself.send_after(backoff, move || SupervisorMsg::Start(index));
            }
            None => {
                tracing::error!(
                    worker = %child.spec.name, %reason, max_restarts = policy.max_restarts, within_s = policy.within.as_secs(),
                    "worker exceeded its restart intensity; leaving it down"
                );
                self.metrics.worker_down.with_label_values(&[&child.spec.name]).set(1);
                child.phase = WorkerPhase::Down { reason };
            }
        }
    }
}

impl Actor for WorkerSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        for index in 0..args.specs.len() {
            myself.cast(SupervisorMsg::Start(index))?;
        }
        let children = args
            .specs
            .into_iter()
            .map(|spec| Child { spec, actor: None, phase: WorkerPhase::Starting, recent: VecDeque::new(), restarts: 0 })
            .collect();
        Ok(SupervisorState {
            children,
            by_actor: HashMap::new(),
            policy: args.policy,
            scheduler: args.scheduler,
            metrics: args.metrics,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Start(index) => {
                let Some(child) = state.children.get_mut(index) else {
                    return Ok(());
                };
                if child.actor.is_some() || matches!(child.phase, WorkerPhase::Down { .. }) {
                    return Ok(());
                }
                child.phase = WorkerPhase::Starting;
                // Loading a model can take minutes: do it off the supervisor's mailbox so that
                // other workers' failures are still handled meanwhile.
                let (spec, metrics) = (child.spec.clone(), state.metrics.clone());
                let me = myself.clone();
                tokio::spawn(async move {
                    let fallback = spec.parallel();
                    let result = match Actor::spawn_linked(None, BackendWorker, (spec, metrics), me.get_cell()).await {
                        Ok((actor, _)) => {
                            let parallel =
                                ractor::call_t!(actor, WorkerMsg::Snapshot, 5000).map_or(fallback, |s| s.n_parallel);
                            Ok((actor, parallel))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = me.cast(SupervisorMsg::Started { index, result });
                });
            }
            SupervisorMsg::Started { index, result } => match result {
                Ok((actor, parallel)) => {
                    let child = &mut state.children[index];
                    state.by_actor.insert(actor.get_id(), index);
                    child.actor = Some(actor.clone());
                    child.phase = WorkerPhase::Ready;
                    state.metrics.worker_down.with_label_values(&[&child.spec.name]).set(0);
                    state.scheduler.cast(SchedulerMsg::WorkerUp { name: child.spec.name.clone(), actor, parallel })?;
                }
                Err(reason) => state.failed(&myself, index, reason),
            },
            SupervisorMsg::Status(reply) => {
                let status = state
                    .children
                    .iter()
                    .map(|c| WorkerStatus { name: c.spec.name.clone(), phase: c.phase.clone(), restarts: c.restarts })
                    .collect();
                let _ = reply.send(status);
            }
            #[cfg(feature = "test-hooks")]
            SupervisorMsg::CrashForTest => panic!("worker supervisor: crash requested by a test"),
            SupervisorMsg::WorkerRef { name, reply } => {
                let actor = state.children.iter().find(|c| c.spec.name == name).and_then(|c| c.actor.clone());
                let _ = reply.send(actor);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        if let Some(index) = state.by_actor.remove(&cell.get_id()) {
            state.failed(&myself, index, reason);
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for child in &state.children {
            if let Some(actor) = &child.actor {
                actor.stop(Some("supervisor stopping".into()));
            }
        }
        Ok(())
    }
}
