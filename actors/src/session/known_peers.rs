//! The addresses each validator has proven itself from: a key exchange from there passed every
//! check (allowed hotkey, fresh timestamp, valid signature, unspent nonce, our RSA key).
//!
//! A `validator-hotkey` header is only a claim — validator hotkeys are public on the metagraph —
//! so it can select a larger budget but never lift a limit. An address that completed a signed
//! exchange as that validator is different: a stranger cannot make one (the nonce is spent, and a
//! relayed exchange comes from the relayer's own address). The door uses it where being limited
//! would cost the validator's weight: its `/availability` polls are never rate limited from an
//! address it has proven.
//!
//! Bounded: at most [`PER_VALIDATOR`] addresses per hotkey (the least recently seen goes first),
//! entries unseen for [`REMEMBER_FOR`] no longer count, and at most [`MAX_VALIDATORS`] hotkeys
//! (only allowed hotkeys get here, but an allow-all policy lets anyone).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Addresses remembered per validator: a validator behind a few NAT addresses or moving hosts.
pub const PER_VALIDATOR: usize = 8;
/// How long a proven address counts without a new exchange from it. Validators exchange keys at
/// least every `FIBER_KEY_TTL_SECONDS` (an hour by default) while they send challenges.
pub const REMEMBER_FOR: Duration = Duration::from_secs(24 * 3600);
/// Hotkeys remembered at once.
pub const MAX_VALIDATORS: usize = 4096;

#[derive(Debug, Default)]
pub struct KnownPeers {
    by_hotkey: DashMap<String, Vec<(IpAddr, Instant)>>,
    /// Every proven address and when it was last proven, by any validator: one read per accepted
    /// connection. Bounded by `MAX_VALIDATORS × PER_VALIDATOR`, trimmed as `by_hotkey` is.
    by_ip: DashMap<IpAddr, Instant>,
    /// (window start, lines logged in it, lines suppressed since the last one logged).
    log_window: std::sync::Mutex<Option<(Instant, u32, u64)>>,
}

/// Lines a minute about validators exchanging from new addresses.
const LOG_PER_MINUTE: u32 = 5;

impl KnownPeers {
    /// Whether a line about a new address may be logged now (`Some(lines suppressed before it)`):
    /// a relayer cycling addresses must not flood the log.
    pub fn admit_log(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.log_window.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, suppressed) = w.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            (*start, *logged) = (now, 0);
        }
        if *logged < LOG_PER_MINUTE {
            *logged += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }

    /// Records a completed exchange by `hotkey` from `ip`. Returns whether the address is new for
    /// this validator (it had exchanged before, from elsewhere), for the log and the metrics.
    pub fn record(&self, hotkey: &str, ip: IpAddr) -> Recorded {
        let now = Instant::now();
        if !self.by_hotkey.contains_key(hotkey) && self.by_hotkey.len() >= MAX_VALIDATORS {
            self.by_hotkey.retain(|_, peers| peers.iter().any(|(_, seen)| now.duration_since(*seen) < REMEMBER_FOR));
            if self.by_hotkey.len() >= MAX_VALIDATORS {
                return Recorded::NotKept;
            }
        }
        self.by_ip.insert(ip, now);
        if self.by_ip.len() > MAX_VALIDATORS * PER_VALIDATOR {
            self.by_ip.retain(|_, seen| now.duration_since(*seen) < REMEMBER_FOR);
        }
        let mut peers = self.by_hotkey.entry(hotkey.to_string()).or_default();
        peers.retain(|(_, seen)| now.duration_since(*seen) < REMEMBER_FOR);
        if let Some(entry) = peers.iter_mut().find(|(a, _)| *a == ip) {
            entry.1 = now;
            return Recorded::Known;
        }
        let first = peers.is_empty();
        if peers.len() >= PER_VALIDATOR {
            if let Some(oldest) = peers.iter().enumerate().min_by_key(|(_, (_, seen))| *seen).map(|(i, _)| i) {
                peers.swap_remove(oldest);
            }
        }
        peers.push((ip, now));
        if first {
            Recorded::First
        } else {
            Recorded::NewAddress
        }
    }

    /// Whether `hotkey` completed an exchange from `ip` within [`REMEMBER_FOR`].
    pub fn is_known(&self, hotkey: &str, ip: IpAddr) -> bool {
        self.by_hotkey
            .get(hotkey)
            .is_some_and(|peers| peers.iter().any(|(a, seen)| *a == ip && seen.elapsed() < REMEMBER_FOR))
    }

    /// Whether any validator completed an exchange from `ip` within [`REMEMBER_FOR`] (the
    /// connection layer keeps a share of its slots for such addresses).
    pub fn is_proven_ip(&self, ip: IpAddr) -> bool {
        self.by_ip.get(&ip).is_some_and(|seen| seen.elapsed() < REMEMBER_FOR)
    }

    /// Forgets a validator (no longer allowed).
    pub fn forget(&self, hotkey: &str) {
        self.by_hotkey.remove(hotkey);
    }
}

/// What [`KnownPeers::record`] made of an exchange's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The validator's first proven address.
    First,
    /// An address it had already proven.
    Known,
    /// A further address of a validator that had exchanged from elsewhere.
    NewAddress,
    /// Not remembered: the table is full of recently active validators.
    NotKept,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn an_address_counts_only_for_the_validator_that_proved_itself_from_it() {
        let peers = KnownPeers::default();
        assert_eq!(peers.record("v1", ip(1)), Recorded::First);
        assert_eq!(peers.record("v1", ip(1)), Recorded::Known);
        assert!(peers.is_known("v1", ip(1)));
        assert!(!peers.is_known("v1", ip(2)), "another address is not proven by the first");
        assert!(!peers.is_known("v2", ip(1)), "another hotkey is not proven by v1's exchange");
        assert_eq!(peers.record("v1", ip(2)), Recorded::NewAddress);
        assert!(peers.is_known("v1", ip(2)));
        peers.forget("v1");
        assert!(!peers.is_known("v1", ip(1)));
    }

    #[test]
    fn a_validator_keeps_its_most_recent_addresses_only() {
        let peers = KnownPeers::default();
        for last in 1..=(PER_VALIDATOR as u8 + 1) {
            peers.record("v", ip(last));
        }
        assert!(!peers.is_known("v", ip(1)), "the least recently seen address went first");
        assert!((2..=PER_VALIDATOR as u8 + 1).all(|last| peers.is_known("v", ip(last))));
    }
}
