//! A validator's share of this miner belongs to the address it exchanges keys from.
//!
//! A validator's signed key exchange does not name the miner it was meant for, so any miner that
//! received one can relay it here with a key of its own choosing (see
//! [`key_exchange`](super::key_exchange)). What such a relayer must not get is the validator's
//! share: its per-validator budget (`HOTKEY_RATE_LIMIT_PER_MINUTE`) and in-flight cap
//! (`MAX_IN_FLIGHT_PER_VALIDATOR`). So both are kept per (validator, exchange address) — the
//! address recorded with each live key — and a challenge spends the share of its key's address:
//! * an address the Challenge API or the chain reports for the validator, or any address when
//!   nothing is reported for it, has a full share of its own;
//! * when addresses are reported, all other addresses of that validator together share one small
//!   share (a quarter), so a relayer on many addresses still gets only that;
//! * a key made without an address (in-process callers) spends the validator's whole share.

use std::net::IpAddr;

use crate::authorization::AddressStanding;
use crate::graph::MinerGraph;

/// The budget and in-flight bucket a challenge or exchange spends, and that bucket's cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub bucket: String,
    pub cap: usize,
    /// Whether this is the small share of a validator's unreported addresses.
    pub elsewhere: bool,
}

/// The in-flight cap that a validator's unreported addresses share when it has reported ones.
pub fn elsewhere_cap(full: usize) -> usize {
    (full / 4).max(1)
}

impl MinerGraph {
    /// The share that `hotkey`'s traffic from `origin` (the key's exchange address) spends.
    pub(crate) fn share_of(&self, hotkey: &str, origin: Option<IpAddr>) -> Share {
        let full = self.door.max_in_flight_per_validator;
        match origin.map(|ip| (ip, self.auth.address_standing(hotkey, ip))) {
            None => Share { bucket: hotkey.to_string(), cap: full, elsewhere: false },
            Some((ip, AddressStanding::Reported | AddressStanding::Unreported)) => {
                Share { bucket: format!("{hotkey}@{ip}"), cap: full, elsewhere: false }
            }
            Some((_, AddressStanding::Elsewhere | AddressStanding::Refused)) => {
                Share { bucket: format!("{hotkey}@elsewhere"), cap: elsewhere_cap(full), elsewhere: true }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_small_share_is_a_quarter_and_never_nothing() {
        assert_eq!(elsewhere_cap(8), 2);
        assert_eq!(elsewhere_cap(3), 1);
        assert_eq!(elsewhere_cap(1), 1);
    }
}
