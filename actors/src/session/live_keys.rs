//! The live symmetric keys, readable by every challenge without a mailbox round trip.
//!
//! A challenge only needs to *read* a key, and reads are the hot path (one per challenge), so the
//! keys sit in a concurrent map that request handlers consult directly. Writes stay with the actors:
//! each validator's [`super::key_session::KeySession`] inserts its keys, expires them and revokes
//! them, and the [`super::registry::KeyRegistry`] clears a crashed session's entries (the graph's
//! root clears them all when the registry itself crashed and took its sessions with it). Nothing
//! else writes here, so the session remains the single owner of a validator's key state.

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
    /// Since when the key's address has held a live key for the validator without a break: the
    /// oldest `since` of that address's keys live when this one was made, or the key's own making.
    since: Instant,
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
        let now = Instant::now();
        let mut keys = self.0.entry(hotkey.to_string()).or_default();
        let since =
            keys.values().filter(|k| k.expires > now && k.origin == origin).map(|k| k.since).min().unwrap_or(now);
        keys.insert(uuid.to_string(), LiveKey { key, expires, origin, since });
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

    /// Drops every key: the registry that owned them crashed, and its sessions with it (see
    /// [`crate::graph`]); each validator's next challenge gets a 401 and it exchanges a key again.
    pub(crate) fn clear(&self) {
        self.0.clear();
    }

    /// The distinct addresses that a validator's live keys were exchanged from, each with since
    /// when it has held one without a break, the longest present first: how a validator's share
    /// is split when nothing reports where it lives (see `front_door::share`). Bounded by the
    /// validator's live keys, which its session caps.
    pub fn origins(&self, hotkey: &str) -> Vec<(IpAddr, Instant)> {
        let now = Instant::now();
        let mut out: Vec<(IpAddr, Instant)> = Vec::new();
        if let Some(keys) = self.0.get(hotkey) {
            for k in keys.values().filter(|k| k.expires > now) {
                let Some(ip) = k.origin else { continue };
                match out.iter_mut().find(|(a, _)| *a == ip) {
                    Some(entry) => entry.1 = entry.1.min(k.since),
                    None => out.push((ip, k.since)),
                }
            }
        }
        out.sort_by_key(|&(ip, since)| (since, ip));
        out
    }

    /// Live keys held for one validator.
    pub fn count(&self, hotkey: &str) -> usize {
        let now = Instant::now();
        self.0.get(hotkey).map_or(0, |keys| keys.values().filter(|k| k.expires > now).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn an_address_that_renews_its_keys_stays_the_longest_present() {
        let live = LiveKeys::default();
        let hour = Instant::now() + Duration::from_secs(3600);
        live.insert("v", "a1", FernetKey::generate().1, hour, ip(1));
        live.insert("v", "r1", FernetKey::generate().1, hour, ip(2));
        // The validator renews; its address's presence runs on from its first key.
        live.insert("v", "a2", FernetKey::generate().1, hour, ip(1));
        live.remove("v", "a1");
        let origins = live.origins("v");
        assert_eq!(origins.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![ip(1).unwrap(), ip(2).unwrap()]);
        assert!(origins[0].1 < origins[1].1);
        // A break (no live key from the address) starts its presence anew.
        live.remove("v", "a2");
        live.insert("v", "a3", FernetKey::generate().1, hour, ip(1));
        assert_eq!(live.origins("v")[0].0, ip(2).unwrap());
        // An expired key holds no presence, and a key without an address is no origin.
        live.insert("v", "old", FernetKey::generate().1, Instant::now(), ip(9));
        live.insert("v", "local", FernetKey::generate().1, hour, None);
        assert_eq!(live.origins("v").len(), 2);
    }
}
