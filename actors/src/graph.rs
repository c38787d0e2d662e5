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
//! The root restarts the worker supervisor if it crashes (with fresh workers); the HTTP layer runs
//! on its own threads, so a crash there never takes the workers down.

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
use crate::worker_supervisor::{RestartPolicy, SupervisorArgs, SupervisorMsg, WorkerStatus, WorkerSupervisor};

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
    pub(crate) limits: Option<Arc<crate::front_door::rate_limit::RateLimiter>>,
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
}

enum RootMsg {
    /// Start the worker supervisor (at graph start, and after it crashed).
    StartSupervisor(RpcReplyPort<Result<SupervisorHandle, String>>),
    Adopt(SupervisorRecipe),
    /// Start (or restart) the chain heartbeat.
    StartChain(Box<HeartbeatArgs>, RpcReplyPort<Result<ActorRef<HeartbeatMsg>, String>>),
    /// Start (or restart) the Challenge API poller.
    StartChallengeApi(Box<ChallengeApiArgs>, RpcReplyPort<Result<ActorRef<ChallengeApiMsg>, String>>),
}

impl Actor for GraphRoot {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<RootMsg>, _: ()) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState { recipe: None, supervisor: None, chain: None, challenge_api: None })
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
            RootMsg::StartSupervisor(reply) => {
                let Some(recipe) = &state.recipe else {
                    let _ = reply.send(Err("no supervisor recipe".into()));
                    return Ok(());
                };
                match Actor::spawn_linked(None, WorkerSupervisor, recipe.args(), myself.get_cell()).await {
                    Ok((sup, _)) => {
                        let handle = match &state.supervisor {
                            Some(h) => {
                                *h.0.write().unwrap_or_else(|e| e.into_inner()) = sup;
                                h.clone()
                            }
                            None => SupervisorHandle(Arc::new(RwLock::new(sup))),
                        };
                        state.supervisor = Some(handle.clone());
                        let _ = reply.send(Ok(handle));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
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
        if let Some((args, chain)) = &state.chain {
            if chain.get_id() == cell.get_id() {
                tracing::error!(error = %err, "the chain heartbeat crashed; restarting it (workers are unaffected)");
                let (args, me) = (args.clone(), myself.clone());
                tokio::spawn(async move {
                    let _ = ractor::call_t!(me, |r| RootMsg::StartChain(Box::new(args), r), 10_000);
                });
                return Ok(());
            }
        }
        if let Some((args, poller)) = &state.challenge_api {
            if poller.get_id() == cell.get_id() {
                tracing::error!(error = %err, "the Challenge API poller crashed; restarting it (the last list stays in force)");
                let (args, me) = (args.clone(), myself.clone());
                tokio::spawn(async move {
                    let _ = ractor::call_t!(me, |r| RootMsg::StartChallengeApi(Box::new(args), r), 10_000);
                });
                return Ok(());
            }
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
        let me = myself.clone();
        tokio::spawn(async move {
            let _ = ractor::call_t!(me, RootMsg::StartSupervisor, 10_000);
        });
        Ok(())
    }
}

impl MinerGraph {
    /// Spawns every actor. Workers load their models in the background: `/availability` turns
    /// true once one is ready.
    pub async fn spawn(config: GraphConfig) -> Result<Self, GraphError> {
        let metrics = Arc::new(Metrics::new());
        let (root, _) =
            Actor::spawn(None, GraphRoot, ()).await.map_err(|source| GraphError::Spawn { what: "root", source })?;
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
            limits: config
                .door
                .rate_limits
                .as_ref()
                .map(|s| Arc::new(crate::front_door::rate_limit::RateLimiter::new(s))),
            door: Arc::new(config.door),
            validator_in_flight: Default::default(),
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
        match self.scheduler.call(|reply| SchedulerMsg::Submit { request, reply, avoid: None }, None).await {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(ScheduleError::NoWorker),
        }
    }

    pub async fn workers(&self) -> Vec<WorkerStatus> {
        ractor::call_t!(self.supervisor.get(), SupervisorMsg::Status, 2000).unwrap_or_default()
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
