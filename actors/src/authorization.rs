//! Who may key-exchange and send challenges: checked before any cryptography.
//!
//! The allowed set is the union of three sources: the static `VALIDATOR_HOTKEYS`, the chain's
//! validators (a validator permit on `NETUID` and at least `MIN_VALIDATOR_STAKE` alpha, refreshed by
//! the chain heartbeat), and the Challenge API's active list. An empty set is an explicit state
//! with an explicit policy (`ALLOW_ALL_WHEN_EMPTY`), logged whenever it changes: the Python miner
//! silently lets everyone in when its list is empty, which we do not copy.
//!
//! The set never fails open by accident: a source's update that comes back empty while that source
//! held validators is kept out (the last good set stays, and the log says so), and until a first
//! non-empty set is loaded an empty, denying set is reported by `/availability` as the reason the
//! miner cannot serve.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Where a set of allowed hotkeys came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Static,
    Chain,
    ChallengeApi,
}

pub struct ValidatorAuth {
    enabled: bool,
    allow_when_empty: bool,
    sets: RwLock<[HashSet<String>; 3]>,
    /// `VALIDATOR_DENY_HOTKEYS`: refused whatever the lists and the policy say (a validator the
    /// operator has reasons to refuse, e.g. one replaying other validators' traffic).
    denied: RwLock<HashSet<String>>,
    /// Whether the union was empty at the last change (to log transitions once).
    was_empty: AtomicBool,
    /// The addresses the Challenge API (its `ip` field) and the chain (a validator's axon) report
    /// per validator hotkey, by source: the "home" addresses a validator's share belongs to, and
    /// under `STRICT_VALIDATOR_ADDRESSES` the only ones it may exchange keys from.
    reported: RwLock<[HashMap<String, HashSet<IpAddr>>; 3]>,
    /// `STRICT_VALIDATOR_ADDRESSES`: refuse a validator's exchange from an address no source reports.
    strict_addresses: AtomicBool,
}

fn index(source: Source) -> usize {
    match source {
        Source::Static => 0,
        Source::Chain => 1,
        Source::ChallengeApi => 2,
    }
}

impl ValidatorAuth {
    /// `enabled = false` admits every hotkey. With it enabled, an empty union admits everyone only
    /// when `allow_when_empty`.
    pub fn new(enabled: bool, hotkeys: impl IntoIterator<Item = String>) -> Self {
        Self::with_policy(enabled, false, hotkeys)
    }

    pub fn with_policy(enabled: bool, allow_when_empty: bool, hotkeys: impl IntoIterator<Item = String>) -> Self {
        let fixed: HashSet<String> =
            hotkeys.into_iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect();
        let auth = Self {
            enabled,
            allow_when_empty,
            sets: RwLock::new([fixed, HashSet::new(), HashSet::new()]),
            denied: RwLock::new(HashSet::new()),
            was_empty: AtomicBool::new(false),
            reported: RwLock::new(Default::default()),
            strict_addresses: AtomicBool::new(false),
        };
        if !enabled {
            tracing::warn!("validator whitelist is disabled: any hotkey may key-exchange and send challenges");
        }
        auth.log_if_empty_changed(true);
        auth
    }

    /// Admits every hotkey (dev mode and tests).
    pub fn allow_all() -> Self {
        Self::with_policy(false, true, [])
    }

    fn union_len(&self) -> usize {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let mut all: HashSet<&String> = HashSet::new();
        for s in sets.iter() {
            all.extend(s.iter());
        }
        all.len()
    }

    fn log_if_empty_changed(&self, force: bool) {
        if !self.enabled {
            return;
        }
        let empty = self.union_len() == 0;
        let before = self.was_empty.swap(empty, Ordering::Relaxed);
        if empty && (force || !before) {
            if self.allow_when_empty {
                tracing::warn!("the allowed validator set is EMPTY; ALLOW_ALL_WHEN_EMPTY admits every hotkey");
            } else {
                tracing::warn!("the allowed validator set is EMPTY; every validator gets 403 until the chain or VALIDATOR_HOTKEYS lists one");
            }
        } else if !empty && before {
            tracing::info!(validators = self.union_len(), "the allowed validator set is no longer empty");
        }
    }

    pub fn is_allowed(&self, hotkey: &str) -> bool {
        if self.denied.read().unwrap_or_else(|e| e.into_inner()).contains(hotkey) {
            return false;
        }
        if !self.enabled {
            return true;
        }
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        if sets.iter().any(|s| s.contains(hotkey)) {
            return true;
        }
        self.allow_when_empty && sets.iter().all(HashSet::is_empty)
    }

    /// Whether `hotkey` is on one of the lists (chain, Challenge API, `VALIDATOR_HOTKEYS`), whatever
    /// the policy: the hotkeys that may have per-validator metrics, a set of bounded size even
    /// when the whitelist is off.
    pub fn is_listed(&self, hotkey: &str) -> bool {
        self.sets.read().unwrap_or_else(|e| e.into_inner()).iter().any(|s| s.contains(hotkey))
    }

    /// Why no validator can be served, when the whitelist is on, the union is empty and the policy
    /// denies: `/availability` reports it instead of a plain `true`.
    pub fn unavailable_reason(&self) -> Option<&'static str> {
        if !self.enabled || self.allow_when_empty || self.union_len() > 0 {
            return None;
        }
        Some("no validator is allowed yet (waiting for the first validator set from the chain or VALIDATOR_HOTKEYS)")
    }

    /// Replaces one source's set; returns the hotkeys that are no longer allowed by any source.
    ///
    /// An empty update for a source that held validators is refused (the last good set stays): an
    /// empty metagraph or API answer is far more often a failed read than every validator leaving
    /// at once, and treating it as real would either lock every validator out or, with
    /// `ALLOW_ALL_WHEN_EMPTY`, let everyone in.
    ///
    /// The static list (`VALIDATOR_HOTKEYS`) is the operator's own word, not a read that can fail:
    /// a reload that empties it is applied.
    pub fn replace(&self, source: Source, hotkeys: HashSet<String>) -> Vec<String> {
        if hotkeys.is_empty() && source != Source::Static {
            let held = self.sets.read().unwrap_or_else(|e| e.into_inner())[index(source)].len();
            if held > 0 {
                tracing::warn!(
                    ?source,
                    kept = held,
                    "the validator set read came back empty; keeping the last good set"
                );
                return Vec::new();
            }
        }
        let removed = {
            let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
            let old = std::mem::replace(&mut sets[index(source)], hotkeys);
            old.into_iter().filter(|h| !sets.iter().any(|s| s.contains(h))).collect::<Vec<_>>()
        };
        tracing::info!(?source, allowed = self.union_len(), revoked = removed.len(), "validator set updated");
        self.log_if_empty_changed(false);
        removed
    }

    /// Replaces the deny list; returns the hotkeys it newly denies (their keys are to be dropped).
    pub fn set_denied(&self, hotkeys: HashSet<String>) -> Vec<String> {
        let mut denied = self.denied.write().unwrap_or_else(|e| e.into_inner());
        let newly = hotkeys.iter().filter(|h| !denied.contains(*h)).cloned().collect();
        *denied = hotkeys;
        newly
    }

    /// Replaces the addresses one source reports per validator (hotkeys it does not name lose
    /// that source's addresses). Like [`Self::replace`], an empty read does not wipe a source that
    /// held addresses.
    pub fn set_reported_addresses(&self, source: Source, addresses: HashMap<String, HashSet<IpAddr>>) {
        let mut reported = self.reported.write().unwrap_or_else(|e| e.into_inner());
        if addresses.is_empty() && !reported[index(source)].is_empty() {
            return;
        }
        reported[index(source)] = addresses;
    }

    /// Whether any source reports `ip` for any validator.
    pub fn reports_ip(&self, ip: IpAddr) -> bool {
        let reported = self.reported.read().unwrap_or_else(|e| e.into_inner());
        reported.iter().any(|by_hotkey| by_hotkey.values().any(|ips| ips.contains(&ip)))
    }

    /// Where `ip` stands for `hotkey`'s exchanges and shares.
    ///
    /// On every exchange and challenge: a read of the reports, nothing allocated.
    pub fn address_standing(&self, hotkey: &str, ip: IpAddr) -> AddressStanding {
        let (is_reported, any_reported) = {
            let reported = self.reported.read().unwrap_or_else(|e| e.into_inner());
            let mut sets = reported.iter().filter_map(|by_hotkey| by_hotkey.get(hotkey));
            let any = sets.clone().any(|ips| !ips.is_empty());
            (sets.any(|ips| ips.contains(&ip)), any)
        };
        if is_reported {
            AddressStanding::Reported
        } else if self.strict_addresses.load(Ordering::Relaxed) {
            AddressStanding::Refused
        } else if !any_reported {
            AddressStanding::Unreported
        } else {
            AddressStanding::Elsewhere
        }
    }

    /// `STRICT_VALIDATOR_ADDRESSES` (reloadable).
    pub fn set_strict_addresses(&self, strict: bool) {
        self.strict_addresses.store(strict, Ordering::Relaxed);
    }

    /// Every listed hotkey (chain, Challenge API, `VALIDATOR_HOTKEYS`) that is not denied: the
    /// validators whose per-validator series `/metrics` shows from the start, so that an alert
    /// sees one that never sends work (see `Metrics::validators`).
    pub fn listed(&self) -> Vec<String> {
        let denied = self.denied.read().unwrap_or_else(|e| e.into_inner());
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = sets.iter().flatten().filter(|h| !denied.contains(*h)).cloned().collect();
        out.sort();
        out.dedup();
        out
    }

    /// Hotkeys currently allowed (the union of every source).
    pub fn allowed_count(&self) -> usize {
        self.union_len()
    }
}

/// How an exchange's address relates to what the Challenge API and the chain report for the
/// validator that signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressStanding {
    /// A reported address of this validator: its own share.
    Reported,
    /// Nothing is reported for this validator: every address it proves itself from has a share
    /// of its own (a relayer elsewhere spends only its address's share).
    Unreported,
    /// Addresses are reported for this validator and this is not one of them: all such addresses
    /// together share one small share (a relayer, or the validator moving before the reports do).
    Elsewhere,
    /// Strict mode, and not a reported address: refused (403).
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_hotkey_is_refused_whatever_the_lists_and_the_policy_say() {
        let listed = ValidatorAuth::new(true, ["5Listed".to_string()]);
        let open = ValidatorAuth::allow_all();
        for auth in [&listed, &open] {
            assert!(auth.is_allowed("5Listed"));
            let newly = auth.set_denied(["5Listed".to_string()].into_iter().collect());
            assert_eq!(newly, vec!["5Listed".to_string()]);
            assert!(!auth.is_allowed("5Listed"), "denied even when listed or when the whitelist is off");
            assert!(auth.set_denied(["5Listed".to_string()].into_iter().collect()).is_empty(), "not newly");
            auth.set_denied(HashSet::new());
            assert!(auth.is_allowed("5Listed"), "allowed again once off the deny list");
        }
    }

    #[test]
    fn the_listed_validators_are_every_sources_less_the_denied_once_each() {
        let auth = ValidatorAuth::new(true, ["5B".to_string(), "5A".to_string()]);
        auth.replace(Source::Chain, ["5A".to_string(), "5C".to_string()].into_iter().collect());
        assert_eq!(auth.listed(), ["5A", "5B", "5C"]);
        auth.set_denied(["5C".to_string()].into_iter().collect());
        assert_eq!(auth.listed(), ["5A", "5B"]);
        assert!(ValidatorAuth::allow_all().listed().is_empty(), "allow-all lists no one");
    }

    #[test]
    fn sources_add_up_and_an_empty_set_follows_the_policy() {
        let deny = ValidatorAuth::with_policy(true, false, []);
        assert!(!deny.is_allowed("v1"));
        let allow = ValidatorAuth::with_policy(true, true, []);
        assert!(allow.is_allowed("anyone"));

        let auth = ValidatorAuth::with_policy(true, true, ["s1".to_string()]);
        assert!(auth.is_allowed("s1") && !auth.is_allowed("c1"), "a non-empty set is enforced");
        auth.replace(Source::Chain, ["c1".into(), "c2".into()].into());
        assert!(auth.is_allowed("c1") && auth.is_allowed("c2"));
        assert!(auth.replace(Source::Chain, HashSet::new()).is_empty(), "an empty read is not applied");
        assert!(auth.is_allowed("c1"), "the last good set stays");
        let revoked = auth.replace(Source::Chain, ["c2".into(), "s1".into()].into());
        assert_eq!(revoked, ["c1"]);
        assert!(!auth.is_allowed("c1"));
        auth.replace(Source::ChallengeApi, ["a1".into()].into());
        assert_eq!(auth.allowed_count(), 3);
        assert!(ValidatorAuth::new(false, []).is_allowed("x"));
        assert!(deny.unavailable_reason().is_some() && allow.unavailable_reason().is_none());
        assert!(auth.unavailable_reason().is_none());
    }

    #[test]
    fn the_operators_own_list_may_be_emptied_but_a_read_that_comes_back_empty_may_not() {
        let auth = ValidatorAuth::new(true, ["s1".to_string()]);
        auth.replace(Source::Chain, ["c1".into()].into());
        assert_eq!(auth.replace(Source::Static, HashSet::new()), ["s1"]);
        assert!(!auth.is_allowed("s1"), "VALIDATOR_HOTKEYS emptied by a reload is applied");
        assert!(auth.replace(Source::Chain, HashSet::new()).is_empty());
        assert!(auth.is_allowed("c1"), "an empty chain read keeps the last good set");
    }

    #[test]
    fn an_address_stands_by_what_the_sources_report_and_strict_mode_refuses_the_rest() {
        let auth = ValidatorAuth::new(true, ["v".to_string(), "w".to_string()]);
        let (home, other) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert_eq!(auth.address_standing("v", home), AddressStanding::Unreported);
        auth.set_reported_addresses(Source::ChallengeApi, [("v".to_string(), [home].into())].into());
        assert_eq!(auth.address_standing("v", home), AddressStanding::Reported);
        assert_eq!(auth.address_standing("v", other), AddressStanding::Elsewhere);
        assert_eq!(auth.address_standing("w", other), AddressStanding::Unreported);
        auth.set_strict_addresses(true);
        assert_eq!(auth.address_standing("v", home), AddressStanding::Reported);
        assert_eq!(auth.address_standing("v", other), AddressStanding::Refused);
        assert_eq!(
            auth.address_standing("w", other),
            AddressStanding::Refused,
            "strict: nothing reported, nothing pinned"
        );
        auth.set_reported_addresses(Source::ChallengeApi, HashMap::new());
        assert_eq!(
            auth.address_standing("v", home),
            AddressStanding::Reported,
            "an empty read keeps the last addresses"
        );
    }
}
