//! A validator's share of this miner belongs to the address it exchanges keys from.
//!
//! A validator's signed key exchange does not name the miner it was meant for, so any miner that
//! received one can relay it here with a key of its own choosing (see
//! [`key_exchange`](super::key_exchange)). What such a relayer must not get is the validator's
//! share: its per-validator budget (`HOTKEY_RATE_LIMIT_PER_MINUTE`) and in-flight cap
//! (`MAX_IN_FLIGHT_PER_VALIDATOR`). So both are kept per (validator, exchange address) — the
//! address recorded with each live key — and a challenge spends the share of its key's address:
//! * an address the Challenge API or the chain reports for the validator has a full share of its
//!   own;
//! * when addresses are reported, all other addresses of that validator together share one small
//!   share (a quarter), so a relayer on many addresses still gets only that;
//! * when nothing is reported for the validator, nothing tells its own address from a relayer's
//!   for sure, but time does: a relayer can only relay an exchange the validator signed, so the
//!   validator's own address has usually held a live key longer, without a break (its keys
//!   overlap as it renews them). A lone address keeps the whole share. With several, what is
//!   split is what can run at once (the share, or the ready workers' sequences when fewer: a part
//!   larger than the sequences lets one address fill them all): the address present longest keeps
//!   half of it, and every other address together shares the other half, each an even part.
//!   Every part is at least one challenge. A relayer on one address or on eight so gets at most
//!   half, and the validator the other half — enough for the one or two challenges a validator
//!   has in flight at a miner. A relayer that is first after a restart (the race is open then)
//!   takes the longest-present half until its keys lapse; only a report (the Challenge API's `ip`,
//!   the validator's axon) or strict mode closes that;
//! * a key made without an address (in-process callers) spends the validator's whole share.

use std::net::IpAddr;

use super::FrontDoor;
use crate::authorization::AddressStanding;

/// The budget and in-flight bucket a challenge or exchange spends, and that bucket's cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub bucket: String,
    pub cap: usize,
    /// Whether this is the small share of a validator's unreported addresses.
    pub elsewhere: bool,
    /// The bucket and cap that every newer address of a validator with nothing reported spends as
    /// well: together they stay within the half that the longest-present address does not keep.
    pub pool: Option<(String, usize)>,
}

/// The in-flight cap that a validator's unreported addresses share when it has reported ones.
pub fn elsewhere_cap(full: usize) -> usize {
    (full / 4).max(1)
}

/// One address's part of a validator's share (`full`) when nothing is reported for the validator:
/// its in-flight cap, and the cap of the pool it shares with the validator's other newer addresses
/// (`None`: its part is its own). `addresses` is how many addresses hold a live key for the
/// validator, `longest_present` whether this one has held one the longest, `sequences` how many
/// challenges the node runs at once (0 before any worker is ready).
pub fn split(full: usize, sequences: usize, addresses: usize, longest_present: bool) -> (usize, Option<usize>) {
    if addresses <= 1 {
        return (full, None);
    }
    let runnable = if sequences == 0 { full } else { full.min(sequences) };
    let kept = (runnable / 2).max(1);
    if longest_present {
        return (kept, None);
    }
    let others = runnable.saturating_sub(kept).max(1);
    ((others / (addresses - 1)).max(1), Some(others))
}

impl FrontDoor {
    /// The share that `hotkey`'s traffic from `origin` (the key's exchange address) spends.
    pub(crate) fn share_of(&self, hotkey: &str, origin: Option<IpAddr>) -> Share {
        let full = self.door.max_in_flight_per_validator;
        match origin.map(|ip| (ip, self.auth.address_standing(hotkey, ip))) {
            None => Share { bucket: hotkey.to_string(), cap: full, elsewhere: false, pool: None },
            Some((ip, AddressStanding::Reported)) => {
                Share { bucket: format!("{hotkey}@{ip}"), cap: full, elsewhere: false, pool: None }
            }
            Some((ip, AddressStanding::Unreported)) => {
                let mut addresses = self.keys().live_origins(hotkey);
                if !addresses.iter().any(|(a, _)| *a == ip) {
                    // An exchange, before its key is stored: the newest address.
                    addresses.push((ip, std::time::Instant::now()));
                }
                let longest_present = addresses[0].0 == ip;
                let (cap, pool) = split(full, self.graph.status_now().sequences, addresses.len(), longest_present);
                Share {
                    bucket: format!("{hotkey}@{ip}"),
                    cap,
                    elsewhere: false,
                    pool: pool.map(|cap| (format!("{hotkey}@newer"), cap)),
                }
            }
            Some((_, AddressStanding::Elsewhere | AddressStanding::Refused)) => {
                Share { bucket: format!("{hotkey}@elsewhere"), cap: elsewhere_cap(full), elsewhere: true, pool: None }
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

    #[test]
    fn an_unreported_validators_longest_present_address_keeps_half_of_what_runs_at_once() {
        assert_eq!(split(8, 32, 1, true), (8, None), "a lone address keeps the whole share");
        assert_eq!(split(8, 32, 0, false), (8, None));
        // Two addresses, 32 sequences: the share itself is split.
        assert_eq!(split(8, 32, 2, true), (4, None));
        assert_eq!(split(8, 32, 2, false), (4, Some(4)));
        // Four sequences: half of them each.
        assert_eq!(split(8, 4, 2, true), (2, None));
        assert_eq!(split(8, 4, 2, false), (2, Some(2)));
        // Eight newer addresses share the other half, one each at least.
        assert_eq!(split(8, 4, 9, true), (2, None));
        assert_eq!(split(8, 4, 9, false), (1, Some(2)));
        assert_eq!(split(8, 32, 5, false), (1, Some(4)));
        // Never nothing, even on one sequence.
        assert_eq!(split(8, 1, 2, true), (1, None));
        assert_eq!(split(8, 1, 2, false), (1, Some(1)));
        assert_eq!(split(8, 0, 2, false), (4, Some(4)), "no worker ready yet: the share itself");
    }
}
