//! One actor per validator hotkey: that validator's live symmetric keys and the nonces it has spent.
//!
//! Owned by the [`super::registry::KeyRegistry`], which spawns it on the validator's first key
//! exchange. The front door talks to it twice per key exchange: once to spend the nonce (right after
//! the signature verifies, before any RSA work) and once to store the unwrapped key. Challenges never
//! message it: they read the key from [`LiveKeys`], which this actor writes. Keeping each validator in
//! its own mailbox means one validator's handshake storm never delays another's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::live_keys::LiveKeys;
use super::SessionSettings;
use crate::protocol::fernet_codec::FernetKey;

/// Why a key exchange was refused by the session (after authorization and signature checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("nonce already used")]
    ReplayedNonce,
    #[error("too many key exchanges from this validator in the replay window")]
    TooManyExchanges,
    /// The uuid names a live key that an exchange from another address made: replacing it would let
    /// whoever holds a validator's signed exchange take over that validator's key.
    #[error("symmetric_key_uuid is in use by a key from another address")]
    UuidTaken,
}

pub enum KeySessionMsg {
    /// Records the nonce as used for `remember_for`, or refuses it if it already was. Sent the
    /// moment a signature verifies, so that a replayed exchange costs no RSA work at all.
    SpendNonce {
        nonce: String,
        remember_for: Duration,
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// Makes `key` live under `uuid` (its nonce was spent first).
    StoreKey {
        uuid: String,
        key: FernetKey,
        /// The address of the exchange that made it.
        origin: Option<IpAddr>,
        reply: RpcReplyPort<Result<(), StoreError>>,
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
    pub live: LiveKeys,
}

pub struct KeySessionState {
    hotkey: String,
    settings: SessionSettings,
    live: LiveKeys,
    /// uuid → (expiry, exchange address) of the keys this session put into `live`.
    keys: HashMap<String, (Instant, Option<IpAddr>)>,
    /// nonce → until when it is remembered. Lifetimes differ (a future-stamped exchange is
    /// remembered longer), so the sweep walks the whole map, which `max_nonces` keeps small.
    nonces: HashMap<String, Instant>,
}

impl KeySessionState {
    fn sweep(&mut self, now: Instant) {
        let live = &self.live;
        let hotkey = &self.hotkey;
        self.keys.retain(|uuid, (expires, _)| {
            let keep = *expires > now;
            if !keep {
                live.remove(hotkey, uuid);
            }
            keep
        });
        self.nonces.retain(|_, expires| *expires > now);
    }

    fn nonce_seen(&self, nonce: &str, now: Instant) -> bool {
        self.nonces.get(nonce).is_some_and(|expires| *expires > now)
    }

    fn spend_nonce(&mut self, nonce: String, remember_for: Duration, now: Instant) -> Result<(), StoreError> {
        if self.nonce_seen(&nonce, now) {
            return Err(StoreError::ReplayedNonce);
        }
        if self.nonces.len() >= self.settings.max_nonces {
            self.sweep(now);
            if self.nonces.len() >= self.settings.max_nonces {
                return Err(StoreError::TooManyExchanges);
            }
        }
        self.nonces.insert(nonce, now + remember_for);
        Ok(())
    }

    fn store_key(
        &mut self,
        uuid: String,
        key: FernetKey,
        origin: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), StoreError> {
        if let Some((expires, held_by)) = self.keys.get(&uuid) {
            if *expires > now && *held_by != origin {
                return Err(StoreError::UuidTaken);
            }
        }
        if self.keys.len() >= self.settings.max_keys && !self.keys.contains_key(&uuid) {
            // Bounded per validator: the key closest to expiry goes first, taken from the keys of
            // the same address when it has any, so that exchanges from one address (a relayer's)
            // cannot push out the keys made from another (the validator's own).
            let same_origin = self.keys.iter().filter(|(_, (_, o))| *o == origin);
            let oldest = same_origin
                .min_by_key(|(_, (e, _))| *e)
                .or_else(|| self.keys.iter().min_by_key(|(_, (e, _))| *e))
                .map(|(u, _)| u.clone());
            if let Some(oldest) = oldest {
                self.keys.remove(&oldest);
                self.live.remove(&self.hotkey, &oldest);
            }
        }
        let expires = now + self.settings.key_ttl + self.settings.key_grace;
        self.live.insert(&self.hotkey, &uuid, key, expires, origin);
        self.keys.insert(uuid, (expires, origin));
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
            live: args.live,
            keys: HashMap::new(),
            nonces: HashMap::new(),
        })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // Only an idle session stops on its own; on shutdown this drops whatever is left.
        state.live.remove_validator(&state.hotkey);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match message {
            KeySessionMsg::SpendNonce { nonce, remember_for, reply } => {
                let _ = reply.send(state.spend_nonce(nonce, remember_for, now));
            }
            KeySessionMsg::StoreKey { uuid, key, origin, reply } => {
                let _ = reply.send(state.store_key(uuid, key, origin, now));
            }
            KeySessionMsg::Revoke => {
                tracing::info!(validator = %state.hotkey, keys = state.keys.len(), "revoking validator keys");
                state.keys.clear();
                state.live.remove_validator(&state.hotkey);
            }
            KeySessionMsg::Sweep => {
                state.sweep(now);
                if state.keys.is_empty() && state.nonces.is_empty() {
                    tracing::debug!(validator = %state.hotkey, "key session idle, stopping");
                    myself.stop(Some("idle".into()));
                }
            }
            KeySessionMsg::Snapshot(reply) => {
                let live_keys = state.keys.values().filter(|(e, _)| *e > now).count();
                let _ = reply.send(SessionSnapshot { live_keys, nonces: state.nonces.len() });
            }
        }
        Ok(())
    }
}

/// How long a sweep tick is when nothing is configured: often enough that memory stays small.
pub const DEFAULT_SWEEP_EVERY: Duration = Duration::from_secs(10);
