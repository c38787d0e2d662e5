//! Spawns the whole actor graph and hands back the handles the node (and tests) talk to.
//!
//! ```text
//!   root (GraphRoot)
//!    ├── KeyRegistry ── KeySession (one per validator hotkey; writes LiveKeys)
//!    ├── Scheduler                    (admission, routing; publishes its status)
//!    └── WorkerSupervisor ── BackendWorker (one per device)
//!   RsaPool                           (bounded blocking slots, no actor)
//! ```
//!
//! The protocol itself (key exchange, challenge) is the front door's, in [`crate::front_door`].
//!
//! The root restarts the worker supervisor if it crashes (with fresh workers), and the chain
//! heartbeat and Challenge API poller likewise, each under a [`RestartPolicy`] (intensity and
//! backoff, as data); the HTTP layer runs on its own threads, so a crash there never takes the
//! workers down.

use std::sync::Arc;
use std::sync::RwLock;

use dashmap::DashMap;
use tokio::sync::{watch, Semaphore};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::authorization::ValidatorAuth;
use crate::backend_worker::{WorkerMsg, WorkerSpec};
use crate::chain::challenge_api::{ChallengeApiArgs, ChallengeApiMsg, ChallengeApiPoller};
use crate::chain::heartbeat::{ChainHeartbeat, HeartbeatArgs, HeartbeatMsg};
use crate::front_door::DoorSettings;
use crate::inference::request::{Generation, GenerationRequest};
use crate::metrics::Metrics;
use crate::protocol::rsa_keys::MinerRsaKey;
use crate::rsa_pool::RsaPool;
use crate::scheduler::{ScheduleError, Scheduler, SchedulerMsg, SchedulerSettings, SchedulerStatus};
use crate::session::live_keys::LiveKeys;
use crate::session::registry::{KeyRegistry, KeyStore, SessionIndex};
use crate::session::SessionSettings;
use crate::worker_supervisor::{
    RestartPolicy, SupervisorArgs, SupervisorMsg, WorkerChanges, WorkerStatus, WorkerSupervisor,
};

/// Everything the graph needs to start.
pub struct GraphConfig {
    pub sessions: SessionSettings,
    pub scheduler: SchedulerSettings,
    pub restart: RestartPolicy,
    pub workers: Vec<WorkerSpec>,
    pub rsa: Arc<MinerRsaKey>,
    /// Who may key-exchange and send challenges.
    pub auth: Arc<ValidatorAuth>,
    pub door: DoorSettings,
}

/// Handles to a running graph. Cheap to clone.
#[derive(Clone)]
pub struct MinerGraph {
    pub keys: KeyStore,
    pub rsa: RsaPool,
    pub scheduler: ActorRef<SchedulerMsg>,
    pub supervisor: SupervisorHandle,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<ValidatorAuth>,
    pub(crate) door: Arc<DoorSettings>,
    pub(crate) verify_slots: Arc<Semaphore>,
    pub(crate) validator_in_flight: Arc<DashMap<String, usize>>,
    /// The addresses each validator has completed a signed exchange from.
    pub known_peers: Arc<crate::front_door::known_peers::KnownPeers>,
    /// Swapped whole by [`MinerGraph::set_rate_limits`] (a configuration reload).
    pub(crate) limits: Arc<std::sync::RwLock<Option<Arc<crate::front_door::rate_limit::RateLimiter>>>>,
    status: watch::Receiver<SchedulerStatus>,
    root: ActorRef<RootMsg>,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("failed to spawn {what}: {source}")]
    Spawn { what: &'static str, source: ractor::SpawnErr },
    #[error("failed to start the worker supervisor: {0}")]
    Start(String),
}

/// Where the current worker supervisor is: the root replaces it when it crashes.
#[derive(Clone)]
pub struct SupervisorHandle(Arc<RwLock<ActorRef<SupervisorMsg>>>);

impl SupervisorHandle {
    pub fn get(&self) -> ActorRef<SupervisorMsg> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the root needs to start the worker supervisor again.
struct SupervisorRecipe {
    specs: Vec<WorkerSpec>,
    policy: RestartPolicy,
    scheduler: ActorRef<SchedulerMsg>,
    metrics: Arc<Metrics>,
}

impl SupervisorRecipe {
    fn args(&self) -> SupervisorArgs {
        SupervisorArgs {
            specs: self.specs.clone(),
            policy: self.policy.clone(),
            scheduler: self.scheduler.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The graph's root: owns the long-lived actors as linked children and restarts the worker
/// supervisor if it ever crashes (its workers are stopped and started afresh).
struct GraphRoot;

struct RootState {
    recipe: Option<SupervisorRecipe>,
    supervisor: Option<SupervisorHandle>,
    /// The chain heartbeat, when the node runs one, and what restarts it.
    chain: Option<(HeartbeatArgs, ActorRef<HeartbeatMsg>)>,
    /// The Challenge API poller, when the node runs one, and what restarts it.
    challenge_api: Option<(ChallengeApiArgs, ActorRef<ChallengeApiMsg>)>,
    /// How the root restarts its own children (the supervisor, the chain actors): intensity and
    /// backoff, as data.
    policy: RestartPolicy,
    /// Recent restarts per child, for the intensity limit.
    restarts: std::collections::HashMap<&'static str, std::collections::VecDeque<std::time::Instant>>,
}

impl RootState {
    /// The wait before restarting `child`, or `None` once it crashed more often than the policy
    /// allows inside its window (the root then leaves it down and says so).
    fn next_restart(&mut self, child: &'static str) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        let window = self.policy.within;
        let recent = self.restarts.entry(child).or_default();
        while recent.front().is_some_and(|t| now.duration_since(*t) > window) {
            recent.pop_front();
        }
        let wait = self.policy.next_backoff(recent.len())?;
        recent.push_back(now);
        Some(wait)
    }
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
            *h.0.write().unwrap_or_else(|e| e.into_inner()) = sup;
            h.clone()
        }
        None => SupervisorHandle(Arc::new(RwLock::new(sup))),
    };
    state.supervisor = Some(handle.clone());
    Ok(handle)
}

/// Restarts `child` after `wait` by sending the root `msg` (or logs that it is given up on).
fn restart_later(
    me: ActorRef<RootMsg>,
    child: &'static str,
    wait: Option<std::time::Duration>,
    msg: impl FnOnce(RpcReplyPort<Result<(), String>>) -> RootMsg + Send + 'static,
) {
    let Some(wait) = wait else {
        tracing::error!(child, "crashed more often than the root's restart policy allows; leaving it down");
        return;
    };
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = ractor::call_t!(me, msg, 10_000);
    });
}

enum RootMsg {
    /// Start the worker supervisor (at graph start, and after it crashed).
    StartSupervisor(RpcReplyPort<Result<SupervisorHandle, String>>),
    Adopt(SupervisorRecipe),
    /// Start (or restart) the chain heartbeat.
    StartChain(Box<HeartbeatArgs>, RpcReplyPort<Result<ActorRef<HeartbeatMsg>, String>>),
    /// Start (or restart) the Challenge API poller.
    StartChallengeApi(Box<ChallengeApiArgs>, RpcReplyPort<Result<ActorRef<ChallengeApiMsg>, String>>),
    /// Restart a crashed child from what the root kept of it.
    Restart(&'static str, RpcReplyPort<Result<(), String>>),
    /// A reload changed the workers: a restarted supervisor starts these.
    SetSpecs(Vec<WorkerSpec>),
}

impl Actor for GraphRoot {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RestartPolicy;

    async fn pre_start(&self, _: ActorRef<RootMsg>, policy: RestartPolicy) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState {
            recipe: None,
            supervisor: None,
            chain: None,
            challenge_api: None,
            policy,
            restarts: Default::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Adopt(recipe) => state.recipe = Some(recipe),
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
            RootMsg::Restart(child, reply) => {
                let me = myself.clone();
                let result = match child {
                    "chain" => match state.chain.as_ref().map(|(a, _)| a.clone()) {
                        Some(args) => Actor::spawn_linked(None, ChainHeartbeat, args.clone(), me.get_cell())
                            .await
                            .map(|(actor, _)| state.chain = Some((args, actor)))
                            .map_err(|e| e.to_string()),
                        None => Ok(()),
                    },
                    "challenge_api" => match state.challenge_api.as_ref().map(|(a, _)| a.clone()) {
                        Some(args) => Actor::spawn_linked(None, ChallengeApiPoller, args.clone(), me.get_cell())
                            .await
                            .map(|(actor, _)| state.challenge_api = Some((args, actor)))
                            .map_err(|e| e.to_string()),
                        None => Ok(()),
                    },
                    _ => start_supervisor(&me, state).await.map(|_| ()),
                };
                let _ = reply.send(result);
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
        if state.chain.as_ref().is_some_and(|(_, chain)| chain.get_id() == cell.get_id()) {
            tracing::error!(error = %err, "the chain heartbeat crashed; restarting it (workers are unaffected)");
            let wait = state.next_restart("chain");
            restart_later(myself, "chain", wait, |r| RootMsg::Restart("chain", r));
            return Ok(());
        }
        if state.challenge_api.as_ref().is_some_and(|(_, poller)| poller.get_id() == cell.get_id()) {
            tracing::error!(error = %err, "the Challenge API poller crashed; restarting it (the last list stays in force)");
            let wait = state.next_restart("challenge_api");
            restart_later(myself, "challenge_api", wait, |r| RootMsg::Restart("challenge_api", r));
            return Ok(());
        }
        let is_supervisor = state.supervisor.as_ref().is_some_and(|h| h.get().get_id() == cell.get_id());
        if !is_supervisor {
            // The node watches this log line; each child is designed to fail only on a bug.
            tracing::error!(actor = ?cell.get_id(), error = %err, "a core actor crashed");
            return Ok(());
        }
        tracing::error!(error = %err, "the worker supervisor crashed; restarting it and its workers");
        cell.stop_children(Some("supervisor crashed".into()));
        if let Some(recipe) = &state.recipe {
            for spec in &recipe.specs {
                let _ = recipe.scheduler.cast(SchedulerMsg::WorkerDown { name: spec.name.clone() });
            }
        }
        let wait = state.next_restart("supervisor");
        restart_later(myself, "supervisor", wait, |r| RootMsg::Restart("supervisor", r));
        Ok(())
    }
}

impl MinerGraph {
    /// Spawns every actor. Workers load their models in the background: `/availability` turns
    /// true once one is ready.
    pub async fn spawn(config: GraphConfig) -> Result<Self, GraphError> {
        let metrics = Arc::new(Metrics::new());
        let (root, _) = Actor::spawn(None, GraphRoot, RestartPolicy::default())
            .await
            .map_err(|source| GraphError::Spawn { what: "root", source })?;
        let cell = root.get_cell();

        let index: SessionIndex = Default::default();
        let live = LiveKeys::default();
        let (registry, _) =
            Actor::spawn_linked(None, KeyRegistry, (config.sessions, index.clone(), live.clone()), cell.clone())
                .await
                .map_err(|source| GraphError::Spawn { what: "key registry", source })?;

        let (published, status) = watch::channel(SchedulerStatus::starting());
        let (scheduler, _) =
            Actor::spawn_linked(None, Scheduler, (config.scheduler, metrics.clone(), published), cell.clone())
                .await
                .map_err(|source| GraphError::Spawn { what: "scheduler", source })?;

        root.cast(RootMsg::Adopt(SupervisorRecipe {
            specs: config.workers,
            policy: config.restart,
            scheduler: scheduler.clone(),
            metrics: metrics.clone(),
        }))
        .map_err(|e| GraphError::Start(e.to_string()))?;
        let supervisor = ractor::call_t!(root, RootMsg::StartSupervisor, 10_000)
            .map_err(|e| GraphError::Start(e.to_string()))?
            .map_err(GraphError::Start)?;

        Ok(Self {
            keys: KeyStore::new(registry, index, live),
            rsa: RsaPool::new(config.rsa, config.door.rsa_slots, metrics.rsa_operations.clone()),
            scheduler,
            supervisor,
            metrics,
            auth: config.auth,
            verify_slots: Arc::new(Semaphore::new(config.door.verify_slots.max(1))),
            limits: Arc::new(std::sync::RwLock::new(
                config.door.rate_limits.as_ref().map(|s| Arc::new(crate::front_door::rate_limit::RateLimiter::new(s))),
            )),
            door: Arc::new(config.door),
            validator_in_flight: Default::default(),
            known_peers: Default::default(),
            status,
            root,
        })
    }

    /// Admission and worker readiness, as the scheduler last published it (no mailbox round trip).
    pub fn status_now(&self) -> SchedulerStatus {
        self.status.borrow().clone()
    }

    /// Admission and worker readiness, asked of the scheduler itself (`None` if it does not answer).
    pub async fn status(&self) -> Option<SchedulerStatus> {
        ractor::call_t!(self.scheduler, SchedulerMsg::Status, 2000).ok()
    }

    /// Sends one generation through the scheduler.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Generation, ScheduleError> {
        self.generate_for(None, request).await
    }

    /// [`Self::generate`] for a validator's challenge: the scheduler keeps each validator supplied
    /// with samples past its wait cap (see [`crate::admission`]).
    pub async fn generate_for(
        &self,
        validator: Option<&str>,
        request: GenerationRequest,
    ) -> Result<Generation, ScheduleError> {
        let validator = validator.map(str::to_string);
        match self.scheduler.call(|reply| SchedulerMsg::Submit { request, reply, rerun: None, validator }, None).await {
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
        let _ = self.scheduler.cast(SchedulerMsg::SetAdmission(false));
    }

    /// Stops every actor.
    pub fn stop(&self) {
        self.root.stop_children(Some("shutdown".into()));
        self.root.stop(Some("shutdown".into()));
    }
}
