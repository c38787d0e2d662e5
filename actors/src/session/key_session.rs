//! One actor per validator hotkey: that validator's live symmetric keys and the nonces it has used.
//!
//! Owned by the [`super::registry::KeyRegistry`], which spawns it on the validator's first key
//! exchange. The HTTP layer talks to it directly (through the registry's read index) to store a key
//! and to look one up per challenge. Keeping each validator in its own mailbox means one validator's
//! handshake storm never delays another's challenge lookup.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::SessionSettings;
use crate::protocol::fernet_codec::FernetKey;

/// Why a key exchange was refused by the session (after authorization and signature checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("nonce already used")]
    ReplayedNonce,
    #[error("too many key exchanges from this validator in the replay window")]
    TooManyExchanges,
}

pub enum KeySessionMsg {
    /// Has this nonce been used inside the replay window? A cheap pre-check before RSA work.
    NonceSeen {
        nonce: String,
        reply: RpcReplyPort<bool>,
    },
    /// Records the nonce and stores the key, atomically: a nonce raced by two requests wins once.
    Store {
        uuid: String,
        nonce: String,
        key: FernetKey,
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// The live key under `uuid`, if any.
    Lookup {
        uuid: String,
        reply: RpcReplyPort<Option<FernetKey>>,
    },
    /// Drops every key (the validator lost its authorization).
    Revoke,
    /// Drops expired keys and nonces; the session stops itself once empty.
    Sweep,
    Snapshot(RpcReplyPort<SessionSnapshot>),
}

/// Observable state, for tests and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub live_keys: usize,
    pub nonces: usize,
}

pub struct KeySession;

pub struct KeySessionArgs {
    pub hotkey: String,
    pub settings: SessionSettings,
}

pub struct KeySessionState {
    hotkey: String,
    settings: SessionSettings,
    keys: HashMap<String, (FernetKey, Instant)>,
    nonces: HashMap<String, Instant>,
    nonce_order: VecDeque<(Instant, String)>,
}

impl KeySessionState {
    fn sweep(&mut self, now: Instant) {
        self.keys.retain(|_, (_, expires)| *expires > now);
        while let Some((expires, _)) = self.nonce_order.front() {
            if *expires > now {
                break;
            }
            let (_, nonce) = self.nonce_order.pop_front().expect("front exists");
            self.nonces.remove(&nonce);
        }
    }

    fn nonce_seen(&self, nonce: &str, now: Instant) -> bool {
        self.nonces.get(nonce).is_some_and(|expires| *expires > now)
    }

    fn store(&mut self, uuid: String, nonce: String, key: FernetKey, now: Instant) -> Result<(), StoreError> {
        self.sweep(now);
        if self.nonce_seen(&nonce, now) {
            return Err(StoreError::ReplayedNonce);
        }
        if self.nonces.len() >= self.settings.max_nonces {
            return Err(StoreError::TooManyExchanges);
        }
        let nonce_expiry = now + self.settings.nonce_window;
        self.nonces.insert(nonce.clone(), nonce_expiry);
        self.nonce_order.push_back((nonce_expiry, nonce));
        if self.keys.len() >= self.settings.max_keys && !self.keys.contains_key(&uuid) {
            // Bounded per validator: the key closest to expiry goes first.
            if let Some(oldest) = self.keys.iter().min_by_key(|(_, (_, e))| *e).map(|(u, _)| u.clone()) {
                self.keys.remove(&oldest);
            }
        }
        let expires = now + self.settings.key_ttl + self.settings.key_grace;
        self.keys.insert(uuid, (key, expires));
        Ok(())
    }
}

impl Actor for KeySession {
    type Msg = KeySessionMsg;
    type State = KeySessionState;
    type Arguments = KeySessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.settings.sweep_every, || KeySessionMsg::Sweep);
        Ok(KeySessionState {
            hotkey: args.hotkey,
            settings: args.settings,
            keys: HashMap::new(),
            nonces: HashMap::new(),
            nonce_order: VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match message {
            KeySessionMsg::NonceSeen { nonce, reply } => {
                let _ = reply.send(state.nonce_seen(&nonce, now));
            }
            KeySessionMsg::Store { uuid, nonce, key, reply } => {
                let result = state.store(uuid, nonce, key, now);
                let _ = reply.send(result);
            }
            KeySessionMsg::Lookup { uuid, reply } => {
                let key = state.keys.get(&uuid).filter(|(_, e)| *e > now).map(|(k, _)| k.clone());
                let _ = reply.send(key);
            }
            KeySessionMsg::Revoke => {
                tracing::info!(validator = %state.hotkey, keys = state.keys.len(), "revoking validator keys");
                state.keys.clear();
            }
            KeySessionMsg::Sweep => {
                state.sweep(now);
                if state.keys.is_empty() && state.nonces.is_empty() {
                    tracing::debug!(validator = %state.hotkey, "key session idle, stopping");
                    myself.stop(Some("idle".into()));
                }
            }
            KeySessionMsg::Snapshot(reply) => {
                let _ = reply.send(SessionSnapshot { live_keys: state.keys.len(), nonces: state.nonces.len() });
            }
        }
        Ok(())
    }
}

/// How long a sweep tick is when nothing is configured: often enough that memory stays small.
pub const DEFAULT_SWEEP_EVERY: Duration = Duration::from_secs(10);
