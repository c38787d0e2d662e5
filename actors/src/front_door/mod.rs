//! The front door: the whole validator protocol, and the one type the node holds of the engine.
//!
//! * [`FrontDoor::exchange_key`] — a validator hands us its Fernet key (`key_exchange`).
//! * [`FrontDoor::answer_challenge`] — decrypt, generate, encrypt (`challenge`).
//! * [`FrontDoor::validators`] — who is allowed, and what goes with a validator no longer allowed.
//!
//! The door owns what the protocol needs per request (its settings, the RSA pool, the rate
//! limits, each validator's in-flight count and proven addresses) and holds the actor graph
//! ([`MinerGraph`]: only the actors' handles) behind it. The HTTP routes only read headers and
//! bodies, call these, and map each error enum to a status in one place (`src/http/error.rs`).
//! Keeping the protocol here means the checks and their order are written once, next to the
//! actors they use, and can be tested without an HTTP server.

pub mod challenge;
pub mod key_exchange;
pub mod limits;
pub mod rate_limit;
pub mod share;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;

use crate::chain::challenge_api::ChallengeApiArgs;
use crate::chain::heartbeat::HeartbeatArgs;
use crate::chain::ChainSettings;
use crate::graph::{GraphConfig, MinerGraph};
use crate::metrics::Metrics;
use crate::protocol::rsa_keys::MinerRsaKey;
use crate::protocol::signature::Hotkey;
use crate::rsa_pool::RsaPool;
use crate::session::known_peers::KnownPeers;
use crate::session::registry::KeyStore;
use crate::validator_set::ValidatorSet;
use crate::workers::spec::WorkerSpec;
use rate_limit::{RateLimitSettings, RateLimiter, Route};

// What the node needs of the engine besides the door: who is allowed, why the engine stopped, and
// how its workers stand. The node reaches nothing else of the engine but `settings` and `metrics`.
pub use crate::authorization::{Source, ValidatorAuth};
pub use crate::graph::{GraphError, GraphFailure};
// A generation without the protocol around it ([`FrontDoor::generate`]).
pub use crate::inference::request::{Generation, GenerationRequest};
pub use crate::scheduler::{ScheduleError, SchedulerStatus};
pub use crate::workers::supervisor::{WorkerChanges, WorkerPhase, WorkerStatus};
// What the operator's checks ask of the parties the engine talks to, outside a running graph: the
// chain (the registration check at start, `post-ip`, `doctor`'s reads) and a backend server's
// health (`doctor`). Named here so that the node keeps to the door when the engine's rooms move.
pub use crate::chain::client::{ChainClient, ChainError};
pub use crate::inference::openai::OpenAiClient;

/// Why the door could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot make the miner's RSA key: {0}")]
    Key(#[from] crate::protocol::rsa_keys::RsaKeyError),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// Protocol knobs the door applies per request; the node's configuration holds them as they are.
#[derive(Debug, Clone)]
pub struct DoorSettings {
    /// TTL applied to challenge tokens, as the validator's own Fernet does.
    pub fernet_ttl_secs: u64,
    /// Time from a challenge's arrival by which its answer must be ready.
    pub deadline: Duration,
    /// Key-exchange timestamps older than this are refused (replay window + clock skew).
    pub max_timestamp_age: Duration,
    /// Key-exchange timestamps further in the future than this are refused.
    pub max_timestamp_ahead: Duration,
    pub default_max_tokens: u32,
    pub default_temperature: f32,
    pub default_top_p: f32,
    /// RSA unwraps at once ([`crate::rsa_pool`]).
    pub rsa_slots: usize,
    /// sr25519 verifications at once, on blocking threads.
    pub verify_slots: usize,
    /// Challenges one validator may have in flight, so that one hotkey cannot take every slot.
    pub max_in_flight_per_validator: usize,
    /// `None`: no rate limits (local development).
    pub rate_limits: Option<rate_limit::RateLimitSettings>,
    /// `TOOL_CALL_TEXT`: an answer that is only tool calls states them in `response_text`.
    pub tool_call_text: bool,
}

impl Default for DoorSettings {
    fn default() -> Self {
        Self {
            fernet_ttl_secs: 3600,
            deadline: Duration::from_millis(50_000),
            max_timestamp_age: Duration::from_secs(330),
            max_timestamp_ahead: Duration::from_secs(300),
            default_max_tokens: 512,
            default_temperature: 0.7,
            default_top_p: 0.95,
            rsa_slots: crate::rsa_pool::DEFAULT_RSA_SLOTS,
            verify_slots: 4,
            max_in_flight_per_validator: usize::MAX,
            rate_limits: None,
            tool_call_text: true,
        }
    }
}

/// The engine as the node sees it: the protocol's state, and the actor graph behind it. Cheap to
/// clone (handles only).
#[derive(Clone)]
pub struct FrontDoor {
    /// The actors behind the door (tests and benchmarks reach single actors through it).
    pub graph: MinerGraph,
    /// Who may key-exchange and send challenges.
    pub auth: Arc<ValidatorAuth>,
    pub rsa: RsaPool,
    /// The addresses each validator has completed a signed exchange from.
    pub known_peers: Arc<KnownPeers>,
    door: Arc<DoorSettings>,
    verify_slots: Arc<Semaphore>,
    validator_in_flight: Arc<DashMap<String, usize>>,
    /// Swapped whole by [`FrontDoor::set_rate_limits`] (a configuration reload).
    limits: Arc<RwLock<Option<Arc<RateLimiter>>>>,
}

impl FrontDoor {
    /// The validators' live keys (the graph's key registry writes them).
    pub fn keys(&self) -> &KeyStore {
        &self.graph.keys
    }

    /// The engine's metrics registry (`/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.graph.metrics
    }

    /// Spawns the actor graph and opens the door in front of it. Workers load their models in
    /// the background: `/availability` turns true once one is ready.
    ///
    /// The door makes a fresh RSA key each time it opens, as the Python miner does at start:
    /// validators fetch it and exchange their keys again after any restart.
    pub async fn open(graph: GraphConfig, door: DoorSettings, auth: Arc<ValidatorAuth>) -> Result<Self, OpenError> {
        let rsa = Arc::new(MinerRsaKey::generate()?);
        let graph = MinerGraph::spawn(graph).await?;
        Ok(Self {
            rsa: RsaPool::new(rsa, door.rsa_slots, graph.metrics.rsa_operations.clone()),
            auth,
            known_peers: Default::default(),
            verify_slots: Arc::new(Semaphore::new(door.verify_slots.max(1))),
            validator_in_flight: Default::default(),
            limits: Arc::new(RwLock::new(door.rate_limits.as_ref().map(|s| Arc::new(RateLimiter::new(s))))),
            door: Arc::new(door),
            graph,
        })
    }

    /// The allowed set with the keys, metrics and proven addresses it governs: what the chain
    /// actors and a reload change it through, so that a validator no longer allowed loses all.
    pub fn validators(&self) -> ValidatorSet {
        ValidatorSet::new(self.auth.clone(), self.keys().clone(), self.metrics().clone(), self.known_peers.clone())
    }

    /// Starts the chain heartbeat under the graph's root (restarted if it crashes).
    pub async fn start_chain(&self, settings: ChainSettings, hotkey: Hotkey) -> Result<(), GraphError> {
        let args = HeartbeatArgs { settings, hotkey, validators: self.validators() };
        self.graph.spawn_chain(args).await.map(|_| ())
    }

    /// Starts the Challenge API poller under the graph's root (restarted if it crashes).
    pub async fn start_challenge_api(&self, url: String, hotkey: Hotkey, every: Duration) -> Result<(), GraphError> {
        let args = ChallengeApiArgs { url, hotkey, every, validators: self.validators() };
        self.graph.spawn_challenge_api(args).await.map(|_| ())
    }

    /// Admission and worker readiness, as the scheduler last published it.
    pub fn status_now(&self) -> SchedulerStatus {
        self.graph.status_now()
    }

    /// Each worker's name, phase and restarts, as its supervisor holds them (`/health`, `status`).
    pub async fn workers(&self) -> Vec<WorkerStatus> {
        self.graph.workers().await
    }

    /// One generation through the scheduler with none of the protocol around it (no key, no
    /// Fernet, no admission by validator): the reference `loosh-bench protocol` subtracts from a
    /// whole challenge, so that the difference is the protocol's own cost.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Generation, ScheduleError> {
        self.graph.generate(request).await
    }

    /// Applies a reload's worker list (unchanged workers keep running).
    pub async fn set_workers(&self, specs: Vec<WorkerSpec>) -> Result<WorkerChanges, GraphError> {
        self.graph.set_workers(specs).await
    }

    /// Opens or closes admission (`/availability` says `admission closed` while it is closed).
    pub fn set_admission(&self, open: bool) {
        self.graph.set_admission(open);
    }

    /// Resolves once the engine can no longer serve (see [`MinerGraph::failed`]).
    pub async fn failed(&self) -> GraphFailure {
        self.graph.failed().await
    }

    /// Graceful stop's first step: admission closes, in-flight challenges finish.
    pub fn close_admission(&self) {
        self.graph.close_admission();
    }

    /// Stops every actor.
    pub fn stop(&self) {
        self.graph.stop();
    }

    /// Test hook: makes a core actor (`scheduler`, `key-registry`, `worker-supervisor`) panic, as
    /// an unexpected state would, so that its restart is exercised through the real binary.
    /// `None`: no such actor; `Some(false)`: it was not running.
    #[cfg(feature = "test-hooks")]
    pub fn crash_for_test(&self, actor: &str) -> Option<bool> {
        use crate::scheduler::SchedulerMsg;
        use crate::session::registry::KeyRegistryMsg;
        use crate::workers::supervisor::SupervisorMsg;
        let g = &self.graph;
        Some(match actor {
            "scheduler" => g.scheduler.get().cast(SchedulerMsg::CrashForTest).is_ok(),
            "key-registry" => g.keys.registry().cast(KeyRegistryMsg::CrashForTest).is_ok(),
            "worker-supervisor" => g.supervisor.get().cast(SupervisorMsg::CrashForTest).is_ok(),
            _ => return None,
        })
    }

    /// The body of an engine child process (the node's own binary, started by a worker with
    /// [`crate::workers::host::child::CHILD_SUBCOMMAND`]): returns its exit status.
    pub fn run_engine_child() -> i32 {
        crate::workers::host::child::run_engine_child()
    }

    /// Waits until every embedded engine, on a thread or in a child process, has freed its model
    /// (its worker stopped), at most `timeout`; whether they all did. Blocking: call it off the
    /// async threads, before the process exits.
    pub fn wait_for_engines(timeout: Duration) -> bool {
        crate::workers::host::stats::wait_for_engines(timeout)
    }

    fn rate_limiter(&self) -> Option<Arc<RateLimiter>> {
        self.limits.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New rate limits (`None`: off), from a configuration reload. The budgets start afresh: a
    /// client mid-burst gets the new quota, not the old one's remainder.
    pub fn set_rate_limits(&self, settings: Option<&RateLimitSettings>) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = settings.map(|s| Arc::new(RateLimiter::new(s)));
    }

    /// The per-IP rate limit for `route`: `Err(seconds to wait)` when over. `names_a_validator`
    /// (the caller claims an allowed hotkey) selects the larger budget.
    pub fn check_ip_rate(&self, route: Route, ip: Option<IpAddr>, names_a_validator: bool) -> Result<(), u64> {
        match (self.rate_limiter(), ip) {
            (Some(limits), Some(ip)) => {
                let result = limits.check_ip(route, ip, names_a_validator);
                if result.is_err() {
                    self.metrics().rate_limited.with_label_values(&[route.name()]).inc();
                }
                result
            }
            _ => Ok(()),
        }
    }

    /// The per-hotkey rate limit, for an identity the door has verified.
    pub(crate) fn check_hotkey_rate(&self, hotkey: &str) -> Result<(), u64> {
        match self.rate_limiter() {
            Some(limits) => {
                let result = limits.check_hotkey(hotkey);
                if result.is_err() {
                    self.metrics().rate_limited.with_label_values(&["hotkey"]).inc();
                }
                result
            }
            None => Ok(()),
        }
    }
}
