//! The key registry: spawns and supervises one [`KeySession`] per validator hotkey, and owns the two
//! read-only views request handlers consult without a round trip through its mailbox: the session
//! index (hotkey → session) and the [`LiveKeys`] map (written by the sessions it supervises).
//! Only the registry writes the index. If the registry itself crashes, its sessions stop with it;
//! the graph's root empties both views and starts a fresh registry (see [`crate::graph`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::key_session::{KeySession, KeySessionArgs, KeySessionMsg, SessionSnapshot, StoreError};
use super::live_keys::{LiveKeyEntry, LiveKeys};
use super::SessionSettings;
use crate::protocol::fernet_codec::FernetKey;
use crate::supervision::Current;

/// How long a handler waits on a session's mailbox before treating it as gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub type SessionIndex = Arc<DashMap<String, ActorRef<KeySessionMsg>>>;

pub enum KeyRegistryMsg {
    /// The session for `hotkey`, spawned if it does not exist.
    SessionFor { hotkey: String, reply: RpcReplyPort<Result<ActorRef<KeySessionMsg>, String>> },
    /// Test hook: makes the registry panic, so the root's restart of it can be exercised.
    #[cfg(feature = "test-hooks")]
    CrashForTest,
}

pub struct KeyRegistry;

pub struct KeyRegistryState {
    settings: SessionSettings,
    index: SessionIndex,
    live: LiveKeys,
}

impl Actor for KeyRegistry {
    type Msg = KeyRegistryMsg;
    type State = KeyRegistryState;
    type Arguments = (SessionSettings, SessionIndex, LiveKeys);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (settings, index, live): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(KeyRegistryState { settings, index, live })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            KeyRegistryMsg::SessionFor { hotkey, reply } => {
                if let Some(existing) = state.index.get(&hotkey) {
                    let _ = reply.send(Ok(existing.clone()));
                    return Ok(());
                }
                let args = KeySessionArgs {
                    hotkey: hotkey.clone(),
                    settings: state.settings.clone(),
                    live: state.live.clone(),
                };
                match Actor::spawn_linked(None, KeySession, args, myself.get_cell()).await {
                    Ok((session, _)) => {
                        state.index.insert(hotkey, session.clone());
                        let _ = reply.send(Ok(session));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            #[cfg(feature = "test-hooks")]
            KeyRegistryMsg::CrashForTest => panic!("key registry: crash requested by a test"),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A session that went idle or crashed leaves the index; the validator's next key exchange
        // spawns a fresh one (a crash costs it one re-handshake, which the protocol handles).
        let gone: Option<ActorCell> = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => Some(cell),
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(error = %err, "key session crashed; its validator will re-handshake");
                Some(cell)
            }
            _ => None,
        };
        if let Some(cell) = gone {
            let live = &state.live;
            state.index.retain(|hotkey, session| {
                let keep = session.get_id() != cell.get_id();
                if !keep {
                    // A crashed session never ran its cleanup: its keys go with it.
                    live.remove_validator(hotkey);
                }
                keep
            });
        }
        Ok(())
    }
}

/// Why the key store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyStoreError {
    #[error(transparent)]
    Refused(#[from] StoreError),
    #[error("key store unavailable: {0}")]
    Unavailable(String),
}

/// The handle the front door uses: cheap to clone, one per process.
#[derive(Clone)]
pub struct KeyStore {
    /// The registry as it is now: the graph's root restarts it if it crashes.
    registry: Current<KeyRegistryMsg>,
    index: SessionIndex,
    live: LiveKeys,
}

impl KeyStore {
    /// Spawns a registry (unsupervised: for tests; the graph links it under its root).
    pub async fn spawn(settings: SessionSettings) -> Result<Self, ractor::SpawnErr> {
        let (index, live) = (SessionIndex::default(), LiveKeys::default());
        let (registry, _) = Actor::spawn(None, KeyRegistry, (settings, index.clone(), live.clone())).await?;
        Ok(Self::new(Current::new(registry), index, live))
    }

    pub fn new(registry: Current<KeyRegistryMsg>, index: SessionIndex, live: LiveKeys) -> Self {
        Self { registry, index, live }
    }

    /// The registry as it is now (a replacement, after a crash); for tests that poke it.
    pub fn registry(&self) -> ActorRef<KeyRegistryMsg> {
        self.registry.get()
    }

    fn existing(&self, hotkey: &str) -> Option<ActorRef<KeySessionMsg>> {
        self.index.get(hotkey).map(|s| s.clone())
    }

    async fn session_for(&self, hotkey: &str) -> Result<ActorRef<KeySessionMsg>, KeyStoreError> {
        if let Some(s) = self.existing(hotkey) {
            return Ok(s);
        }
        let hotkey = hotkey.to_string();
        ractor::call_t!(
            self.registry.get(),
            |reply| KeyRegistryMsg::SessionFor { hotkey, reply },
            CALL_TIMEOUT.as_millis() as u64
        )
        .map_err(|e| KeyStoreError::Unavailable(e.to_string()))?
        .map_err(KeyStoreError::Unavailable)
    }

    /// The live key for (hotkey, uuid): a map read, no mailbox.
    pub fn lookup(&self, hotkey: &str, uuid: &str) -> Option<LiveKeyEntry> {
        self.live.get(hotkey, uuid)
    }

    /// The distinct exchange addresses of `hotkey`'s live keys, the longest present first (see
    /// [`LiveKeys::origins`]): a map read, no mailbox.
    pub fn live_origins(&self, hotkey: &str) -> Vec<(IpAddr, Instant)> {
        self.live.origins(hotkey)
    }

    /// Marks `nonce` used by `hotkey` for `remember_for`; a nonce already used is refused.
    pub async fn spend_nonce(&self, hotkey: &str, nonce: &str, remember_for: Duration) -> Result<(), KeyStoreError> {
        // A session may stop (idle) between the index read and our call: then ask the registry again.
        for _ in 0..2 {
            let session = self.session_for(hotkey).await?;
            let nonce = nonce.to_string();
            match ractor::call_t!(
                session,
                |reply| KeySessionMsg::SpendNonce { nonce, remember_for, reply },
                CALL_TIMEOUT.as_millis() as u64
            ) {
                Ok(result) => return result.map_err(KeyStoreError::from),
                Err(ractor::RactorErr::Timeout) => {
                    return Err(KeyStoreError::Unavailable("key session did not answer in time".into()))
                }
                Err(_) => {
                    self.index.retain(|_, s| s.get_id() != session.get_id());
                }
            }
        }
        Err(KeyStoreError::Unavailable("key session stopped twice in a row".into()))
    }

    /// Makes `key` live under (hotkey, uuid). Call after [`Self::spend_nonce`] succeeded: a session
    /// holding a fresh nonce does not stop as idle, so this reaches the same session.
    /// `origin` is the exchange's address: the key's challenges spend that address's share.
    pub async fn store_key(
        &self,
        hotkey: &str,
        uuid: &str,
        key: FernetKey,
        origin: Option<IpAddr>,
    ) -> Result<(), KeyStoreError> {
        let session = self.session_for(hotkey).await?;
        let uuid = uuid.to_string();
        ractor::call_t!(
            session,
            |reply| KeySessionMsg::StoreKey { uuid, key, origin, reply },
            CALL_TIMEOUT.as_millis() as u64
        )
        .map_err(|e| KeyStoreError::Unavailable(e.to_string()))?
        .map_err(KeyStoreError::from)
    }

    /// Drops every key a validator holds. The keys stop reading as live at once (a validator that
    /// lost its permit must not get one more challenge through); the session forgets them when it
    /// handles the message.
    pub fn revoke(&self, hotkey: &str) {
        self.live.remove_validator(hotkey);
        if let Some(s) = self.existing(hotkey) {
            let _ = s.cast(KeySessionMsg::Revoke);
        }
    }

    /// Live keys and nonces of one validator (zeros when it has no session).
    pub async fn snapshot(&self, hotkey: &str) -> SessionSnapshot {
        let empty = SessionSnapshot { live_keys: 0, nonces: 0 };
        let Some(session) = self.existing(hotkey) else {
            return empty;
        };
        ractor::call_t!(session, KeySessionMsg::Snapshot, CALL_TIMEOUT.as_millis() as u64).unwrap_or(empty)
    }

    /// Validators with a live session.
    pub fn sessions(&self) -> usize {
        self.index.len()
    }
}
