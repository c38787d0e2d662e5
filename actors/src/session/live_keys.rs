//! The live symmetric keys, readable by every challenge without a mailbox round trip.
//!
//! A challenge only needs to *read* a key, and reads are the hot path (one per challenge), so the
//! keys sit in a concurrent map that request handlers consult directly. Writes stay with the actors:
//! each validator's [`super::key_session::KeySession`] inserts its keys, expires them and revokes
//! them, and the [`super::registry::KeyRegistry`] clears a crashed session's entries. Nothing else
//! writes here, so the session remains the single owner of a validator's key state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use crate::protocol::fernet_codec::FernetKey;

#[derive(Clone)]
struct LiveKey {
    key: FernetKey,
    expires: Instant,
    origin: Option<IpAddr>,
}

/// A live key and the address of the exchange that made it: a challenge under this key spends the
/// budget and the in-flight share of that (validator, address), so a relayer that made a key of
/// its own with a validator's signed exchange spends only its own address's share.
#[derive(Clone)]
pub struct LiveKeyEntry {
    pub key: FernetKey,
    pub origin: Option<IpAddr>,
}

/// hotkey → (uuid → key). Keyed by hotkey first so that a lookup borrows `&str` (no allocation)
/// and a validator's keys can be dropped in one removal.
#[derive(Clone, Default)]
pub struct LiveKeys(Arc<DashMap<String, HashMap<String, LiveKey>>>);

impl LiveKeys {
    /// The live key for (hotkey, uuid); an expired one reads as absent even before its sweep.
    pub fn get(&self, hotkey: &str, uuid: &str) -> Option<LiveKeyEntry> {
        let keys = self.0.get(hotkey)?;
        keys.get(uuid)
            .filter(|k| k.expires > Instant::now())
            .map(|k| LiveKeyEntry { key: k.key.clone(), origin: k.origin })
    }

    pub(crate) fn insert(&self, hotkey: &str, uuid: &str, key: FernetKey, expires: Instant, origin: Option<IpAddr>) {
        self.0.entry(hotkey.to_string()).or_default().insert(uuid.to_string(), LiveKey { key, expires, origin });
    }

    pub(crate) fn remove(&self, hotkey: &str, uuid: &str) {
        if let Some(mut keys) = self.0.get_mut(hotkey) {
            keys.remove(uuid);
        }
        self.0.remove_if(hotkey, |_, keys| keys.is_empty());
    }

    pub(crate) fn remove_validator(&self, hotkey: &str) {
        self.0.remove(hotkey);
    }

    /// Live keys held for one validator.
    pub fn count(&self, hotkey: &str) -> usize {
        let now = Instant::now();
        self.0.get(hotkey).map_or(0, |keys| keys.values().filter(|k| k.expires > now).count())
    }
}
