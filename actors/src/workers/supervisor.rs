//! The worker supervisor: starts one backend worker per configured device, restarts failed ones
//! with exponential backoff, and gives up on a worker that crashes too often.
//!
//! Erlang-style: a worker that hits an unexpected state crashes; the supervisor restarts it with
//! fresh state unless it has crashed `max_restarts` times within `within`, in which case the worker
//! stays down and `/metrics` (`loosh_worker_down`) and the logs say why (the policy and its
//! history are [`crate::supervision`]'s). It announces each worker that comes up, goes down or is
//! retired on a channel ([`WorkerEvent`]), and announces the running ones again on request (after
//! the scheduler, which listens, was restarted); it knows nothing of who listens. Other workers
//! never notice a sibling's crash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use tokio::sync::mpsc::UnboundedSender;

use super::spec::WorkerSpec;
use super::worker::{BackendWorker, WorkerMsg};
use crate::metrics::Metrics;
use crate::supervision::{Decision, RestartHistory, RestartPolicy};

/// What the supervisor announces about a worker, in the order it happens.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// Ready, generating up to `parallel` sequences at once.
    Up { name: String, actor: ActorRef<WorkerMsg>, parallel: usize },
    /// Gone (crashed, stopped): what it held is released.
    Down { name: String },
    /// Being removed by a reload: it takes nothing new, finishes what it holds, then is `Down`.
    Retire { name: String },
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
    /// A reload's worker list: workers whose spec is unchanged keep running (their keys, sequences
    /// and in-flight challenges untouched); removed ones stop taking challenges, finish what they
    /// hold and stop; changed ones are removed that way and then started with the new spec (after
    /// the old one let go of its device); new ones start.
    SetWorkers {
        specs: Vec<WorkerSpec>,
        reply: RpcReplyPort<WorkerChanges>,
    },
    /// A retired worker finished its work (or ran out of time to): stop it, start its replacement.
    Retired {
        index: usize,
    },
    /// The listener was restarted (with fresh state): announce every worker that is up again.
    Announce,
    /// Test hook: makes the supervisor itself panic, so the root's restart of it can be exercised.
    #[cfg(feature = "test-hooks")]
    CrashForTest,
}

/// What a reload did to the workers, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Restarted with a new spec once their in-flight work is done.
    pub replaced: Vec<String>,
    pub kept: Vec<String>,
}

/// How long a retired worker may take to finish what it holds: a challenge's deadline is 60 s.
const RETIRE_DRAIN: Duration = Duration::from_secs(70);

pub struct WorkerSupervisor;

pub struct SupervisorArgs {
    pub specs: Vec<WorkerSpec>,
    pub policy: RestartPolicy,
    /// Where [`WorkerEvent`]s go.
    pub events: UnboundedSender<WorkerEvent>,
    pub metrics: Arc<Metrics>,
}

struct Child {
    spec: WorkerSpec,
    actor: Option<ActorRef<WorkerMsg>>,
    /// Sequences the running worker generates at once, as it reported at its start: told to a
    /// restarted scheduler again.
    parallel: usize,
    phase: WorkerPhase,
    history: RestartHistory,
    /// Removed by a reload: never started again, left out of the status. Slots are kept so that
    /// indices in pending `Start` messages stay valid.
    retired: bool,
    /// The child (index) to start once this retired one has stopped: its replacement.
    then_start: Option<usize>,
}

impl Child {
    fn new(spec: WorkerSpec) -> Self {
        Child {
            spec,
            actor: None,
            parallel: 1,
            phase: WorkerPhase::Starting,
            history: RestartHistory::default(),
            retired: false,
            then_start: None,
        }
    }
}

pub struct SupervisorState {
    children: Vec<Child>,
    by_actor: HashMap<ActorId, usize>,
    policy: RestartPolicy,
    events: UnboundedSender<WorkerEvent>,
    metrics: Arc<Metrics>,
}

impl SupervisorState {
    fn set_workers(&mut self, myself: &ActorRef<SupervisorMsg>, specs: Vec<WorkerSpec>) -> WorkerChanges {
        let mut changes = WorkerChanges::default();
        let live: Vec<usize> = (0..self.children.len()).filter(|&i| !self.children[i].retired).collect();
        for &i in &live {
            let name = self.children[i].spec.name.clone();
            match specs.iter().find(|s| s.name == name) {
                Some(spec) if *spec == self.children[i].spec => changes.kept.push(name),
                Some(spec) => {
                    let next = self.children.len();
                    self.children.push(Child::new(spec.clone()));
                    self.retire(myself, i, Some(next));
                    changes.replaced.push(name);
                }
                None => {
                    self.retire(myself, i, None);
                    changes.removed.push(name);
                }
            }
        }
        for spec in specs {
            if !live.iter().any(|&i| self.children[i].spec.name == spec.name) {
                let index = self.children.len();
                changes.added.push(spec.name.clone());
                self.children.push(Child::new(spec));
                let _ = myself.cast(SupervisorMsg::Start(index));
            }
        }
        changes
    }

    /// Takes worker `index` off the schedule, lets it finish what it holds (bounded by
    /// [`RETIRE_DRAIN`]), stops it, then reports `Retired`. Its stop is no failure: it is no
    /// longer watched.
    fn retire(&mut self, myself: &ActorRef<SupervisorMsg>, index: usize, then_start: Option<usize>) {
        let child = &mut self.children[index];
        child.retired = true;
        child.then_start = then_start;
        let _ = self.events.send(WorkerEvent::Retire { name: child.spec.name.clone() });
        let Some(actor) = child.actor.take() else {
            // Not running (starting, restarting or down): a start in flight is stopped when it
            // reports; nothing to wait for otherwise.
            if !matches!(child.phase, WorkerPhase::Starting) {
                let _ = myself.cast(SupervisorMsg::Retired { index });
            }
            return;
        };
        self.by_actor.remove(&actor.get_id());
        let (me, events, name) = (myself.clone(), self.events.clone(), child.spec.name.clone());
        tokio::spawn(async move {
            let until = Instant::now() + RETIRE_DRAIN;
            while Instant::now() < until {
                match ractor::call_t!(actor, WorkerMsg::Snapshot, 2000) {
                    Ok(s) if s.active > 0 => tokio::time::sleep(Duration::from_millis(100)).await,
                    _ => break,
                }
            }
            actor.stop(Some("removed by a reload".into()));
            // Whatever it still held is released (its replies fail when the actor goes).
            let _ = events.send(WorkerEvent::Down { name });
            let _ = me.cast(SupervisorMsg::Retired { index });
        });
    }

    fn failed(&mut self, myself: &ActorRef<SupervisorMsg>, index: usize, reason: String) {
        let policy = &self.policy;
        let child = &mut self.children[index];
        child.actor = None;
        let _ = self.events.send(WorkerEvent::Down { name: child.spec.name.clone() });
        match child.history.on_failure(policy, Instant::now()) {
            Decision::Restart { after } => {
                self.metrics.worker_restarts.with_label_values(&[&child.spec.name]).inc();
                tracing::warn!(worker = %child.spec.name, %reason, backoff_ms = after.as_millis() as u64, "worker failed; restarting");
                child.phase = WorkerPhase::Restarting { after_failure: reason };
                myself.send_after(after, move || SupervisorMsg::Start(index));
            }
            Decision::GiveUp => {
                // `OnGiveUp::LeaveDown`: a worker is one device, and the others still answer.
                tracing::error!(
                    worker = %child.spec.name, %reason, max_restarts = policy.max_restarts, within_s = policy.within.as_secs(),
                    "worker exceeded its restart intensity; leaving it down"
                );
                self.metrics.worker_down.with_label_values(&[&child.spec.name]).set(1);
                child.phase = WorkerPhase::Down { reason };
            }
        }
    }

    /// Announces every worker that is up: after the scheduler was restarted, its fresh state
    /// knows none of them.
    fn announce(&self) {
        for child in self.children.iter().filter(|c| !c.retired) {
            if let Some(actor) = &child.actor {
                let (name, actor, parallel) = (child.spec.name.clone(), actor.clone(), child.parallel);
                // Down again already: its next restart asks for another announcement.
                let _ = self.events.send(WorkerEvent::Up { name, actor, parallel });
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
        let children = args.specs.into_iter().map(Child::new).collect();
        Ok(SupervisorState {
            children,
            by_actor: HashMap::new(),
            policy: args.policy,
            events: args.events,
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
                if child.retired {
                    // Removed before it started: its replacement, if any, may go.
                    myself.cast(SupervisorMsg::Retired { index })?;
                    return Ok(());
                }
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
            SupervisorMsg::Started { index, result } if state.children[index].retired => {
                // Removed while it was loading: it never joins the schedule.
                if let Ok((actor, _)) = result {
                    actor.stop(Some("removed by a reload".into()));
                }
                myself.cast(SupervisorMsg::Retired { index })?;
            }
            SupervisorMsg::Started { index, result } => match result {
                Ok((actor, parallel)) => {
                    let child = &mut state.children[index];
                    state.by_actor.insert(actor.get_id(), index);
                    child.actor = Some(actor.clone());
                    child.parallel = parallel;
                    child.history.started(Instant::now());
                    child.phase = WorkerPhase::Ready;
                    state.metrics.worker_down.with_label_values(&[&child.spec.name]).set(0);
                    // A scheduler that is down (restarting) hears of it in the announcement its
                    // restart triggers.
                    let _ = state.events.send(WorkerEvent::Up { name: child.spec.name.clone(), actor, parallel });
                }
                Err(reason) => state.failed(&myself, index, reason),
            },
            SupervisorMsg::Status(reply) => {
                let status = state
                    .children
                    .iter()
                    .filter(|c| !c.retired)
                    .map(|c| WorkerStatus {
                        name: c.spec.name.clone(),
                        phase: c.phase.clone(),
                        restarts: c.history.total(),
                    })
                    .collect();
                let _ = reply.send(status);
            }
            SupervisorMsg::Announce => state.announce(),
            #[cfg(feature = "test-hooks")]
            SupervisorMsg::CrashForTest => panic!("worker supervisor: crash requested by a test"),
            SupervisorMsg::WorkerRef { name, reply } => {
                let actor =
                    state.children.iter().find(|c| c.spec.name == name && !c.retired).and_then(|c| c.actor.clone());
                let _ = reply.send(actor);
            }
            SupervisorMsg::SetWorkers { specs, reply } => {
                let changes = state.set_workers(&myself, specs);
                tracing::info!(
                    added = ?changes.added, removed = ?changes.removed, replaced = ?changes.replaced, kept = ?changes.kept,
                    "workers reloaded"
                );
                let _ = reply.send(changes);
            }
            SupervisorMsg::Retired { index } => {
                let child = &mut state.children[index];
                if let Some(next) = child.then_start.take() {
                    tracing::info!(worker = %child.spec.name, "old worker stopped; starting its replacement");
                    myself.cast(SupervisorMsg::Start(next))?;
                } else {
                    state.metrics.worker_down.with_label_values(&[&child.spec.name]).set(0);
                    tracing::info!(worker = %child.spec.name, "removed worker stopped");
                }
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
