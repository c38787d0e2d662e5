//! Spawns the whole actor graph and hands back the handles the front door (and tests) talk to.
//!
//! ```text
//!   root (GraphRoot)
//!    ├── KeyRegistry ── KeySession (one per validator hotkey; writes LiveKeys)
//!    ├── Scheduler                    (admission, routing; publishes its status)
//!    ├── WorkerSupervisor ── BackendWorker (one per device)
//!    └── ChainHeartbeat, ChallengeApiPoller (when the node runs them)
//! ```
//!
//! The protocol itself (key exchange, challenge) is the front door's, in [`crate::front_door`],
//! which holds this graph: here are only the actors and their handles.
//!
//! The root restarts each of its children that crashes, with fresh state, under one
//! [`RestartPolicy`] (intensity and backoff, as data, in [`crate::supervision`]); the handles the
//! rest of the node holds ([`Current`]) reach the replacement. What each restart must rebuild:
//!
//! - the scheduler: the worker supervisor tells it again which workers are up, and a closed
//!   admission stays closed; challenges it held fail (their callers see the worker gone);
//! - the key registry: its key sessions stopped with it, and with them the validators' nonces;
//!   their keys are dropped, so each validator's next challenge gets a 401 carrying our public
//!   key and it exchanges a key again (what the protocol does after any miner restart);
//! - the worker supervisor: its workers are stopped and started afresh.
//!
//! A child that crashes more often than the policy allows is given up on, and giving up on any
//! of them stops the node ([`OnGiveUp::StopNode`]): [`MinerGraph::failed`] resolves, and the
//! node exits non-zero so that its service manager starts it afresh. The root failing itself
//! does the same. The HTTP layer runs on its own threads, so a crash there never takes the
//! workers down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::chain::challenge_api::{ChallengeApiArgs, ChallengeApiMsg, ChallengeApiPoller};
use crate::chain::heartbeat::{ChainHeartbeat, HeartbeatArgs, HeartbeatMsg};
use crate::inference::request::{Generation, GenerationRequest};
use crate::metrics::Metrics;
use crate::scheduler::{ScheduleError, Scheduler, SchedulerMsg, SchedulerSettings, SchedulerStatus};
use crate::session::live_keys::LiveKeys;
use crate::session::registry::{KeyRegistry, KeyRegistryMsg, KeyStore, SessionIndex};
use crate::session::SessionSettings;
use crate::supervision::RestartPolicy;
use crate::supervision::{Current, Decision, OnGiveUp, RestartHistory};
use crate::workers::spec::WorkerSpec;
use crate::workers::supervisor::{
    SupervisorArgs, SupervisorMsg, WorkerChanges, WorkerEvent, WorkerStatus, WorkerSupervisor,
};
use crate::workers::worker::WorkerMsg;

/// Everything the graph needs to start.
pub struct GraphConfig {
    pub sessions: SessionSettings,
    pub scheduler: SchedulerSettings,
    /// How the worker supervisor restarts workers, and the root its own children.
    pub restart: RestartPolicy,
    pub workers: Vec<WorkerSpec>,
}

/// Handles to a running graph. Cheap to clone.
#[derive(Clone)]
pub struct MinerGraph {
    pub keys: KeyStore,
    /// The scheduler as it is now (the root replaces it if it crashes).
    pub scheduler: Current<SchedulerMsg>,
    pub supervisor: SupervisorHandle,
    pub metrics: Arc<Metrics>,
    status: watch::Receiver<SchedulerStatus>,
    /// Whether admission is open as the node last set it: a restarted scheduler is told again.
    admission: Arc<AtomicBool>,
    /// Set once the graph can no longer serve (see [`MinerGraph::failed`]).
    failure: watch::Receiver<Option<GraphFailure>>,
    /// Set by [`MinerGraph::stop`]: the root stopping is then no failure.
    stopping: Arc<AtomicBool>,
    root: ActorRef<RootMsg>,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("failed to spawn {what}: {source}")]
    Spawn { what: &'static str, source: ractor::SpawnErr },
    #[error("failed to start the worker supervisor: {0}")]
    Start(String),
}

/// Why a running graph can no longer serve: the node stops and exits non-zero, so that its
/// service manager starts it afresh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphFailure {
    #[error("the {child} failed again after {max_restarts} restart(s) within {} s, the restart policy's limit; last error: {last_error}", within.as_secs())]
    GaveUp { child: &'static str, max_restarts: usize, within: Duration, last_error: String },
    #[error("the actor graph's root stopped unexpectedly (see the error logged before this)")]
    RootDown,
}

/// Where the current worker supervisor is: the root replaces it when it crashes.
pub type SupervisorHandle = Current<SupervisorMsg>;

/// The root's children, each restarted under the root's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Child {
    KeyRegistry,
    Scheduler,
    Supervisor,
    Chain,
    ChallengeApi,
}

impl Child {
    fn name(self) -> &'static str {
        match self {
            Child::KeyRegistry => "key registry",
            Child::Scheduler => "scheduler",
            Child::Supervisor => "worker supervisor",
            Child::Chain => "chain heartbeat",
            Child::ChallengeApi => "Challenge API poller",
        }
    }
}

/// What the root does with a child it gave up on. The same for all of them: without its key
/// registry or scheduler the node answers nothing, without its worker supervisor it has no
/// workers, and the chain actors keep the validator set current; a fresh process is the
/// remaining remedy.
const ON_GIVE_UP: OnGiveUp = OnGiveUp::StopNode;

/// What the root needs to start the worker supervisor again.
struct SupervisorRecipe {
    specs: Vec<WorkerSpec>,
    policy: RestartPolicy,
    /// Where the supervisor announces its workers (forwarded to the scheduler as it is now).
    events: mpsc::UnboundedSender<WorkerEvent>,
    metrics: Arc<Metrics>,
}

impl SupervisorRecipe {
    fn args(&self) -> SupervisorArgs {
        SupervisorArgs {
            specs: self.specs.clone(),
            policy: self.policy.clone(),
            events: self.events.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// What the root needs to start the scheduler again: the same settings, and the same status
/// channel, so that `/availability` keeps reading it.
struct SchedulerRecipe {
    settings: SchedulerSettings,
    metrics: Arc<Metrics>,
    published: watch::Sender<SchedulerStatus>,
    admission: Arc<AtomicBool>,
    current: Current<SchedulerMsg>,
}

/// What the root needs to start the key registry again, and the views it must empty first.
struct RegistryRecipe {
    settings: SessionSettings,
    index: SessionIndex,
    live: LiveKeys,
    current: Current<KeyRegistryMsg>,
}

/// The graph's root: owns the long-lived actors as linked children and restarts each that
/// crashes (see the module's documentation).
struct GraphRoot;

struct RootState {
    keys: Option<RegistryRecipe>,
    scheduler: Option<SchedulerRecipe>,
    recipe: Option<SupervisorRecipe>,
    supervisor: Option<SupervisorHandle>,
    /// The chain heartbeat, when the node runs one, and what restarts it.
    chain: Option<(HeartbeatArgs, ActorRef<HeartbeatMsg>)>,
    /// The Challenge API poller, when the node runs one, and what restarts it.
    challenge_api: Option<(ChallengeApiArgs, ActorRef<ChallengeApiMsg>)>,
    /// How the root restarts its children: intensity and backoff, as data.
    policy: RestartPolicy,
    histories: std::collections::HashMap<Child, RestartHistory>,
    /// Where the root says it gave up (read by [`MinerGraph::failed`]).
    failure: watch::Sender<Option<GraphFailure>>,
}

impl RootState {
    /// Which child `cell` is, if it is one the root restarts.
    fn which(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        if self.keys.as_ref().is_some_and(|k| k.current.get().get_id() == id) {
            Some(Child::KeyRegistry)
        } else if self.scheduler.as_ref().is_some_and(|s| s.current.get().get_id() == id) {
            Some(Child::Scheduler)
        } else if self.supervisor.as_ref().is_some_and(|h| h.get().get_id() == id) {
            Some(Child::Supervisor)
        } else if self.chain.as_ref().is_some_and(|(_, a)| a.get_id() == id) {
            Some(Child::Chain)
        } else if self.challenge_api.as_ref().is_some_and(|(_, a)| a.get_id() == id) {
            Some(Child::ChallengeApi)
        } else {
            None
        }
    }

    /// `child` crashed with `error`: schedules its restart, or gives up on it (and so on the node).
    fn crashed(&mut self, myself: &ActorRef<RootMsg>, child: Child, error: String) {
        let history = self.histories.entry(child).or_default();
        match history.on_failure(&self.policy, Instant::now()) {
            Decision::Restart { after } => {
                tracing::error!(child = child.name(), %error, backoff_ms = after.as_millis() as u64, "a core actor crashed; restarting it with fresh state");
                myself.send_after(after, move || RootMsg::Restart(child));
            }
            Decision::GiveUp => {
                let failure = GraphFailure::GaveUp {
                    child: child.name(),
                    max_restarts: self.policy.max_restarts,
                    within: self.policy.within,
                    last_error: error,
                };
                match ON_GIVE_UP {
                    OnGiveUp::StopNode => {
                        tracing::error!(child = child.name(), failure = %failure, "giving up on a core actor: the node stops");
                        self.failure.send_if_modified(|f| f.is_none() && f.replace(failure).is_none());
                    }
                    OnGiveUp::LeaveDown => {
                        tracing::error!(child = child.name(), failure = %failure, "giving up on it; leaving it down");
                    }
                }
            }
        }
    }

    /// Spawns a fresh scheduler, points every handle at it, tells it whether admission is open
    /// and has the worker supervisor announce its running workers to it.
    async fn restart_scheduler(&mut self, myself: &ActorRef<RootMsg>) -> Result<(), String> {
        let s = self.scheduler.as_ref().ok_or("no scheduler recipe")?;
        let args = (s.settings.clone(), s.metrics.clone(), s.published.clone());
        let (scheduler, _) =
            Actor::spawn_linked(None, Scheduler, args, myself.get_cell()).await.map_err(|e| e.to_string())?;
        s.current.set(scheduler.clone());
        self.histories.entry(Child::Scheduler).or_default().started(Instant::now());
        if !s.admission.load(Ordering::SeqCst) {
            scheduler.cast(SchedulerMsg::SetAdmission(false)).map_err(|e| e.to_string())?;
        }
        if let Some(supervisor) = &self.supervisor {
            // A supervisor that is itself restarting announces its workers as they start.
            let _ = supervisor.get().cast(SupervisorMsg::Announce);
        }
        Ok(())
    }

    /// Spawns a fresh key registry and points every handle at it (its views were emptied when
    /// the old one crashed).
    async fn restart_registry(&mut self, myself: &ActorRef<RootMsg>) -> Result<(), String> {
        let k = self.keys.as_ref().ok_or("no key registry recipe")?;
        let args = (k.settings.clone(), k.index.clone(), k.live.clone());
        let (registry, _) =
            Actor::spawn_linked(None, KeyRegistry, args, myself.get_cell()).await.map_err(|e| e.to_string())?;
        k.current.set(registry);
        self.histories.entry(Child::KeyRegistry).or_default().started(Instant::now());
        Ok(())
    }
}

/// A channel whose [`WorkerEvent`]s reach the scheduler as it is now, in the order they were sent
/// (one forwarding task); it ends when the last sender (the root's recipe) is gone.
fn forward_to(scheduler: Current<SchedulerMsg>) -> mpsc::UnboundedSender<WorkerEvent> {
    let (events, mut received) = mpsc::unbounded_channel::<WorkerEvent>();
    tokio::spawn(async move {
        while let Some(event) = received.recv().await {
            // A scheduler that is restarting misses it; its restart asks for an announcement.
            let _ = scheduler.get().cast(event.into());
        }
    });
    events
}

/// Starts the worker supervisor from the recipe (at graph start, and after it crashed), keeping
/// the handle every clone of the graph reads.
async fn start_supervisor(myself: &ActorRef<RootMsg>, state: &mut RootState) -> Result<SupervisorHandle, String> {
    let recipe = state.recipe.as_ref().ok_or("no supervisor recipe")?;
    let (sup, _) = Actor::spawn_linked(None, WorkerSupervisor, recipe.args(), myself.get_cell())
        .await
        .map_err(|e| e.to_string())?;
    let handle = match &state.supervisor {
        Some(h) => {
            h.set(sup);
            h.clone()
        }
        None => Current::new(sup),
    };
    state.supervisor = Some(handle.clone());
    state.histories.entry(Child::Supervisor).or_default().started(Instant::now());
    Ok(handle)
}

enum RootMsg {
    /// Start the worker supervisor (at graph start, and after it crashed).
    StartSupervisor(RpcReplyPort<Result<SupervisorHandle, String>>),
    Adopt(Box<(RegistryRecipe, SchedulerRecipe, SupervisorRecipe)>),
    /// Start (or restart) the chain heartbeat.
    StartChain(Box<HeartbeatArgs>, RpcReplyPort<Result<ActorRef<HeartbeatMsg>, String>>),
    /// Start (or restart) the Challenge API poller.
    StartChallengeApi(Box<ChallengeApiArgs>, RpcReplyPort<Result<ActorRef<ChallengeApiMsg>, String>>),
    /// Restart a crashed child from what the root kept of it (a restart that fails counts as
    /// one more failure of the child).
    Restart(Child),
    /// A reload changed the workers: a restarted supervisor starts these.
    SetSpecs(Vec<WorkerSpec>),
}

impl Actor for GraphRoot {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = (RestartPolicy, watch::Sender<Option<GraphFailure>>);

    async fn pre_start(
        &self,
        _: ActorRef<RootMsg>,
        (policy, failure): Self::Arguments,
    ) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState {
            keys: None,
            scheduler: None,
            recipe: None,
            supervisor: None,
            chain: None,
            challenge_api: None,
            policy,
            histories: Default::default(),
            failure,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Adopt(recipes) => {
                let (keys, scheduler, supervisor) = *recipes;
                state.keys = Some(keys);
                state.scheduler = Some(scheduler);
                state.recipe = Some(supervisor);
            }
            RootMsg::StartChain(args, reply) => {
                match Actor::spawn_linked(None, ChainHeartbeat, (*args).clone(), myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.chain = Some((*args, actor.clone()));
                        let _ = reply.send(Ok(actor));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            RootMsg::StartChallengeApi(args, reply) => {
                match Actor::spawn_linked(None, ChallengeApiPoller, (*args).clone(), myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.challenge_api = Some((*args, actor.clone()));
                        let _ = reply.send(Ok(actor));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            RootMsg::SetSpecs(specs) => {
                if let Some(recipe) = state.recipe.as_mut() {
                    recipe.specs = specs;
                }
            }
            RootMsg::Restart(child) => {
                let me = myself.clone();
                let result = match child {
                    Child::Chain => match state.chain.as_ref().map(|(a, _)| a.clone()) {
                        Some(args) => Actor::spawn_linked(None, ChainHeartbeat, args.clone(), me.get_cell())
                            .await
                            .map(|(actor, _)| state.chain = Some((args, actor)))
                            .map_err(|e| e.to_string()),
                        None => Ok(()),
                    },
                    Child::ChallengeApi => match state.challenge_api.as_ref().map(|(a, _)| a.clone()) {
                        Some(args) => Actor::spawn_linked(None, ChallengeApiPoller, args.clone(), me.get_cell())
                            .await
                            .map(|(actor, _)| state.challenge_api = Some((args, actor)))
                            .map_err(|e| e.to_string()),
                        None => Ok(()),
                    },
                    Child::Scheduler => state.restart_scheduler(&me).await,
                    Child::KeyRegistry => state.restart_registry(&me).await,
                    Child::Supervisor => start_supervisor(&me, state).await.map(|_| ()),
                };
                match result {
                    Ok(()) => tracing::info!(child = child.name(), "restarted"),
                    Err(e) => state.crashed(&myself, child, format!("its restart failed: {e}")),
                }
            }
            RootMsg::StartSupervisor(reply) => {
                let _ = reply.send(start_supervisor(&myself, state).await);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, err) = event else { return Ok(()) };
        let Some(child) = state.which(&cell) else {
            // The node watches this log line; each child is designed to fail only on a bug.
            tracing::error!(actor = ?cell.get_id(), error = %err, "a core actor crashed");
            return Ok(());
        };
        match child {
            Child::KeyRegistry => {
                // Its sessions stopped with it, without their own cleanup: the views they wrote
                // go too, so that no key outlives the session that owned it.
                if let Some(k) = &state.keys {
                    k.index.clear();
                    k.live.clear();
                }
                tracing::warn!("the key registry crashed: validators' keys are dropped; they will exchange keys again");
            }
            Child::Supervisor => {
                cell.stop_children(Some("supervisor crashed".into()));
                if let Some(recipe) = &state.recipe {
                    // On the supervisor's own channel, after whatever it announced before it crashed.
                    for spec in &recipe.specs {
                        let _ = recipe.events.send(WorkerEvent::Down { name: spec.name.clone() });
                    }
                }
            }
            Child::Scheduler | Child::Chain | Child::ChallengeApi => {}
        }
        state.crashed(&myself, child, err.to_string());
        Ok(())
    }
}

impl MinerGraph {
    /// Spawns every actor. Workers load their models in the background: `/availability` turns
    /// true once one is ready.
    pub async fn spawn(config: GraphConfig) -> Result<Self, GraphError> {
        let metrics = Arc::new(Metrics::new());
        let (failed, failure) = watch::channel(None);
        let (root, root_done) = Actor::spawn(None, GraphRoot, (config.restart.clone(), failed.clone()))
            .await
            .map_err(|source| GraphError::Spawn { what: "root", source })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let watching = stopping.clone();
        tokio::spawn(async move {
            let _ = root_done.await;
            if !watching.load(Ordering::SeqCst) {
                tracing::error!("the actor graph's root stopped unexpectedly: the node stops");
                failed.send_if_modified(|f| f.is_none() && f.replace(GraphFailure::RootDown).is_none());
            }
        });
        let cell = root.get_cell();

        let index: SessionIndex = Default::default();
        let live = LiveKeys::default();
        let (registry, _) = Actor::spawn_linked(
            None,
            KeyRegistry,
            (config.sessions.clone(), index.clone(), live.clone()),
            cell.clone(),
        )
        .await
        .map_err(|source| GraphError::Spawn { what: "key registry", source })?;
        let registry = Current::new(registry);

        let (published, status) = watch::channel(SchedulerStatus::starting());
        let (scheduler, _) = Actor::spawn_linked(
            None,
            Scheduler,
            (config.scheduler.clone(), metrics.clone(), published.clone()),
            cell.clone(),
        )
        .await
        .map_err(|source| GraphError::Spawn { what: "scheduler", source })?;
        let scheduler = Current::new(scheduler);
        let admission = Arc::new(AtomicBool::new(true));

        let recipes = (
            RegistryRecipe {
                settings: config.sessions,
                index: index.clone(),
                live: live.clone(),
                current: registry.clone(),
            },
            SchedulerRecipe {
                settings: config.scheduler,
                metrics: metrics.clone(),
                published,
                admission: admission.clone(),
                current: scheduler.clone(),
            },
            SupervisorRecipe {
                specs: config.workers,
                policy: config.restart,
                events: forward_to(scheduler.clone()),
                metrics: metrics.clone(),
            },
        );
        root.cast(RootMsg::Adopt(Box::new(recipes))).map_err(|e| GraphError::Start(e.to_string()))?;
        let supervisor = ractor::call_t!(root, RootMsg::StartSupervisor, 10_000)
            .map_err(|e| GraphError::Start(e.to_string()))?
            .map_err(GraphError::Start)?;

        Ok(Self {
            keys: KeyStore::new(registry, index, live),
            scheduler,
            supervisor,
            metrics,
            status,
            admission,
            failure,
            stopping,
            root,
        })
    }

    /// Resolves once the graph can no longer serve: a core actor crashed more often than the
    /// restart policy allows, or the root itself stopped. The node must then stop and exit
    /// non-zero. Never resolves for a graph stopped by [`Self::stop`].
    pub async fn failed(&self) -> GraphFailure {
        let mut failure = self.failure.clone();
        let seen = failure.wait_for(|f| f.is_some()).await.ok().and_then(|f| f.clone());
        match seen {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    /// Admission and worker readiness, as the scheduler last published it (no mailbox round trip).
    pub fn status_now(&self) -> SchedulerStatus {
        self.status.borrow().clone()
    }

    /// Admission and worker readiness, asked of the scheduler itself (`None` if it does not answer).
    pub async fn status(&self) -> Option<SchedulerStatus> {
        ractor::call_t!(self.scheduler.get(), SchedulerMsg::Status, 2000).ok()
    }

    /// Sends one generation through the scheduler.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Generation, ScheduleError> {
        self.generate_for(None, request).await
    }

    /// [`Self::generate`] for a validator's challenge: the scheduler keeps each validator supplied
    /// with samples past its wait cap (see [`crate::scheduler::admission`]).
    pub async fn generate_for(
        &self,
        validator: Option<&str>,
        request: GenerationRequest,
    ) -> Result<Generation, ScheduleError> {
        let validator = validator.map(str::to_string);
        match self
            .scheduler
            .get()
            .call(|reply| SchedulerMsg::Submit { request, reply, rerun: None, validator }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(ScheduleError::NoWorker),
        }
    }

    pub async fn workers(&self) -> Vec<WorkerStatus> {
        ractor::call_t!(self.supervisor.get(), SupervisorMsg::Status, 2000).unwrap_or_default()
    }

    /// Applies a reload's worker list (see [`SupervisorMsg::SetWorkers`]); a later restart of
    /// the supervisor starts these too.
    pub async fn set_workers(&self, specs: Vec<WorkerSpec>) -> Result<WorkerChanges, GraphError> {
        let _ = self.root.cast(RootMsg::SetSpecs(specs.clone()));
        ractor::call_t!(self.supervisor.get(), |reply| SupervisorMsg::SetWorkers { specs, reply }, 10_000)
            .map_err(|e| GraphError::Start(e.to_string()))
    }

    pub async fn worker_ref(&self, name: &str) -> Option<ActorRef<WorkerMsg>> {
        let name = name.to_string();
        ractor::call_t!(self.supervisor.get(), |reply| SupervisorMsg::WorkerRef { name, reply }, 2000).ok().flatten()
    }

    /// Starts the chain heartbeat under the graph's root (restarted if it crashes).
    pub async fn spawn_chain(&self, args: HeartbeatArgs) -> Result<ActorRef<HeartbeatMsg>, GraphError> {
        ractor::call_t!(self.root, |r| RootMsg::StartChain(Box::new(args), r), 10_000)
            .map_err(|e| GraphError::Start(e.to_string()))?
            .map_err(GraphError::Start)
    }

    /// Starts the Challenge API poller under the graph's root (restarted if it crashes).
    pub async fn spawn_challenge_api(&self, args: ChallengeApiArgs) -> Result<ActorRef<ChallengeApiMsg>, GraphError> {
        ractor::call_t!(self.root, |r| RootMsg::StartChallengeApi(Box::new(args), r), 10_000)
            .map_err(|e| GraphError::Start(e.to_string()))?
            .map_err(GraphError::Start)
    }

    /// Closes admission (in-flight work finishes) — the first step of a graceful shutdown.
    pub fn close_admission(&self) {
        self.set_admission(false);
    }

    /// Opens or closes admission (`/availability` says `admission closed` while it is closed); a
    /// restarted scheduler is told again.
    pub fn set_admission(&self, open: bool) {
        self.admission.store(open, Ordering::SeqCst);
        let _ = self.scheduler.get().cast(SchedulerMsg::SetAdmission(open));
    }

    /// Stops every actor.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.root.stop_children(Some("shutdown".into()));
        self.root.stop(Some("shutdown".into()));
    }
}
