//! The key registry: spawns and supervises one [`KeySession`] per validator hotkey, and keeps a
//! read index (hotkey → session) that request handlers consult without a round trip through the
//! registry's mailbox. Only the registry writes the index.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::key_session::{KeySession, KeySessionArgs, KeySessionMsg, SessionSnapshot, StoreError};
use super::SessionSettings;
use crate::protocol::fernet_codec::FernetKey;

/// How long a handler waits on a session's mailbox before treating it as gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub type SessionIndex = Arc<DashMap<String, ActorRef<KeySessionMsg>>>;

pub enum KeyRegistryMsg {
    /// The session for `hotkey`, spawned if it does not exist.
    SessionFor { hotkey: String, reply: RpcReplyPort<Result<ActorRef<KeySessionMsg>, String>> },
}

pub struct KeyRegistry;

pub struct KeyRegistryState {
    settings: SessionSettings,
    index: SessionIndex,
}

impl Actor for KeyRegistry {
    type Msg = KeyRegistryMsg;
    type State = KeyRegistryState;
    type Arguments = (SessionSettings, SessionIndex);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (settings, index): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(KeyRegistryState { settings, index })
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
                let args = KeySessionArgs { hotkey: hotkey.clone(), settings: state.settings.clone() };
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
            state.index.retain(|_, session| session.get_id() != cell.get_id());
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

/// The handle the HTTP layer uses: cheap to clone, one per process.
#[derive(Clone)]
pub struct KeyStore {
    registry: ActorRef<KeyRegistryMsg>,
    index: SessionIndex,
}

impl KeyStore {
    pub fn new(registry: ActorRef<KeyRegistryMsg>, index: SessionIndex) -> Self {
        Self { registry, index }
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
            self.registry,
            |reply| KeyRegistryMsg::SessionFor { hotkey, reply },
            CALL_TIMEOUT.as_millis() as u64
        )
        .map_err(|e| KeyStoreError::Unavailable(e.to_string()))?
        .map_err(KeyStoreError::Unavailable)
    }

    /// The live key for (hotkey, uuid). A validator without a session simply has no key.
    pub async fn lookup(&self, hotkey: &str, uuid: &str) -> Option<FernetKey> {
        let session = self.existing(hotkey)?;
        let uuid = uuid.to_string();
        ractor::call_t!(session, |reply| KeySessionMsg::Lookup { uuid, reply }, CALL_TIMEOUT.as_millis() as u64)
            .ok()
            .flatten()
    }

    /// Whether the validator already used `nonce` inside the replay window.
    pub async fn nonce_seen(&self, hotkey: &str, nonce: &str) -> bool {
        let Some(session) = self.existing(hotkey) else {
            return false;
        };
        let nonce = nonce.to_string();
        ractor::call_t!(session, |reply| KeySessionMsg::NonceSeen { nonce, reply }, CALL_TIMEOUT.as_millis() as u64)
            .unwrap_or(false)
    }

    /// Records the nonce and stores the key under (hotkey, uuid).
    pub async fn store(&self, hotkey: &str, uuid: &str, nonce: &str, key: FernetKey) -> Result<(), KeyStoreError> {
        // A session may stop (idle) between the index read and our call: then ask the registry again.
        for _ in 0..2 {
            let session = self.session_for(hotkey).await?;
            let (uuid, nonce, key) = (uuid.to_string(), nonce.to_string(), key.clone());
            match ractor::call_t!(
                session,
                |reply| KeySessionMsg::Store { uuid, nonce, key, reply },
                CALL_TIMEOUT.as_millis() as u64
            ) {
                Ok(result) => return result.map_err(KeyStoreError::from),
                Err(_) => {
                    self.index.retain(|_, s| s.get_id() != session.get_id());
                    continue;
                }
            }
        }
        Err(KeyStoreError::Unavailable("key session stopped twice in a row".into()))
    }

    /// Drops every key a validator holds.
    pub fn revoke(&self, hotkey: &str) {
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
