//! Spawns the whole actor graph and hands back the handles the node (and tests) talk to.
//!
//! ```text
//!   root (GraphRoot)
//!    ├── KeyRegistry ── KeySession (one per validator hotkey)
//!    ├── ChallengeCrypto × N          (Fernet both ways, RSA unwrap)
//!    ├── Scheduler                    (admission, routing)
//!    └── WorkerSupervisor ── BackendWorker (one per device)
//! ```
//!
//! The root restarts a crashed registry, crypto actor or scheduler with fresh state (validators
//! re-handshake; the supervisor re-announces its workers), so one component's crash never takes the
//! workers down.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::backend_worker::{WorkerMsg, WorkerSpec};
use crate::challenge_crypto::{ChallengeCrypto, CryptoPool};
use crate::inference::request::{Generation, GenerationRequest};
use crate::metrics::Metrics;
use crate::protocol::rsa_keys::MinerRsaKey;
use crate::scheduler::{
    ScheduleError, Scheduler, SchedulerMsg, SchedulerSettings, SchedulerStatus,
};
use crate::session::registry::{KeyRegistry, KeyStore, SessionIndex};
use crate::session::SessionSettings;
use crate::worker_supervisor::{
    RestartPolicy, SupervisorArgs, SupervisorMsg, WorkerStatus, WorkerSupervisor,
};

/// Everything the graph needs to start.
pub struct GraphConfig {
    pub sessions: SessionSettings,
    pub scheduler: SchedulerSettings,
    pub restart: RestartPolicy,
    pub workers: Vec<WorkerSpec>,
    pub crypto_actors: usize,
    pub rsa: Arc<MinerRsaKey>,
}

/// Handles to a running graph. Cheap to clone.
#[derive(Clone)]
pub struct MinerGraph {
    pub keys: KeyStore,
    pub crypto: CryptoPool,
    pub scheduler: ActorRef<SchedulerMsg>,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub metrics: Arc<Metrics>,
    root: ActorRef<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("failed to spawn {what}: {source}")]
    Spawn {
        what: &'static str,
        source: ractor::SpawnErr,
    },
}

/// The graph's root: owns the long-lived actors as linked children.
struct GraphRoot;

impl Actor for GraphRoot {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            // The node watches this log line; each child is designed to fail only on a bug.
            tracing::error!(actor = ?cell.get_id(), error = %err, "a core actor crashed");
        }
        Ok(())
    }
}

impl MinerGraph {
    /// Spawns every actor. Workers load their models in the background: `/availability` turns
    /// true once one is ready.
    pub async fn spawn(config: GraphConfig) -> Result<Self, GraphError> {
        let metrics = Arc::new(Metrics::new());
        let (root, _) =
            Actor::spawn(None, GraphRoot, ())
                .await
                .map_err(|source| GraphError::Spawn {
                    what: "root",
                    source,
                })?;
        let cell = root.get_cell();

        let index: SessionIndex = Default::default();
        let (registry, _) = Actor::spawn_linked(
            None,
            KeyRegistry,
            (config.sessions, index.clone()),
            cell.clone(),
        )
        .await
        .map_err(|source| GraphError::Spawn {
            what: "key registry",
            source,
        })?;

        let mut crypto = Vec::new();
        for _ in 0..config.crypto_actors.max(1) {
            let (a, _) =
                Actor::spawn_linked(None, ChallengeCrypto, config.rsa.clone(), cell.clone())
                    .await
                    .map_err(|source| GraphError::Spawn {
                        what: "challenge crypto",
                        source,
                    })?;
            crypto.push(a);
        }

        let (scheduler, _) = Actor::spawn_linked(
            None,
            Scheduler,
            (config.scheduler, metrics.clone()),
            cell.clone(),
        )
        .await
        .map_err(|source| GraphError::Spawn {
            what: "scheduler",
            source,
        })?;

        let args = SupervisorArgs {
            specs: config.workers,
            policy: config.restart,
            scheduler: scheduler.clone(),
            metrics: metrics.clone(),
        };
        let (supervisor, _) = Actor::spawn_linked(None, WorkerSupervisor, args, cell)
            .await
            .map_err(|source| GraphError::Spawn {
                what: "worker supervisor",
                source,
            })?;

        Ok(Self {
            keys: KeyStore::new(registry, index),
            crypto: CryptoPool::new(crypto, config.rsa.public_pem()),
            scheduler,
            supervisor,
            metrics,
            root,
        })
    }

    /// Admission and worker readiness, as `/availability` reports it.
    pub async fn status(&self) -> Option<SchedulerStatus> {
        ractor::call_t!(self.scheduler, SchedulerMsg::Status, 2000).ok()
    }

    /// Sends one generation through the scheduler.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Generation, ScheduleError> {
        match self
            .scheduler
            .call(|reply| SchedulerMsg::Submit { request, reply }, None)
            .await
        {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(ScheduleError::NoWorker),
        }
    }

    pub async fn workers(&self) -> Vec<WorkerStatus> {
        ractor::call_t!(self.supervisor, SupervisorMsg::Status, 2000).unwrap_or_default()
    }

    pub async fn worker_ref(&self, name: &str) -> Option<ActorRef<WorkerMsg>> {
        let name = name.to_string();
        ractor::call_t!(
            self.supervisor,
            |reply| SupervisorMsg::WorkerRef { name, reply },
            2000
        )
        .ok()
        .flatten()
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
