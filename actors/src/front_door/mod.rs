//! The front door: the whole validator protocol, behind two calls on [`crate::graph::MinerGraph`].
//!
//! * [`MinerGraph::exchange_key`](crate::graph::MinerGraph::exchange_key) — a validator hands us
//!   its Fernet key (`key_exchange`).
//! * [`MinerGraph::answer_challenge`](crate::graph::MinerGraph::answer_challenge) — decrypt,
//!   generate, encrypt (`challenge`).
//!
//! The HTTP routes only read headers and bodies, call these, and map each error enum to a status in
//! one place (`src/http/error.rs`). Keeping the protocol here means the checks and their order are
//! written once, next to the actors they use, and can be tested without an HTTP server.

pub mod challenge;
pub mod key_exchange;
pub mod known_peers;
pub mod limits;
pub mod rate_limit;
pub mod share;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::graph::MinerGraph;
use rate_limit::{RateLimiter, Route};

/// Protocol knobs the door applies per request; the node's configuration holds them as they are.
#[derive(Debug, Clone)]
pub struct DoorSettings {
    /// TTL applied to challenge tokens, as the validator's own Fernet does.
    pub fernet_ttl_secs: u64,
    /// Time from a challenge's arrival by which its answer must be ready.
    pub deadline: Duration,
    /// Key-exchange timestamps older than this are refused (replay window + clock skew).
    pub max_timestamp_age: Duration,
    /// Key-exchange timestamps further in the future than this are refused.
    pub max_timestamp_ahead: Duration,
    pub default_max_tokens: u32,
    pub default_temperature: f32,
    pub default_top_p: f32,
    /// RSA unwraps at once ([`crate::rsa_pool`]).
    pub rsa_slots: usize,
    /// sr25519 verifications at once, on blocking threads.
    pub verify_slots: usize,
    /// Challenges one validator may have in flight, so that one hotkey cannot take every slot.
    pub max_in_flight_per_validator: usize,
    /// `None`: no rate limits (local development).
    pub rate_limits: Option<rate_limit::RateLimitSettings>,
    /// `TOOL_CALL_TEXT`: an answer that is only tool calls states them in `response_text`.
    pub tool_call_text: bool,
}

impl Default for DoorSettings {
    fn default() -> Self {
        Self {
            fernet_ttl_secs: 3600,
            deadline: Duration::from_millis(50_000),
            max_timestamp_age: Duration::from_secs(330),
            max_timestamp_ahead: Duration::from_secs(300),
            default_max_tokens: 512,
            default_temperature: 0.7,
            default_top_p: 0.95,
            rsa_slots: crate::rsa_pool::DEFAULT_RSA_SLOTS,
            verify_slots: 4,
            max_in_flight_per_validator: usize::MAX,
            rate_limits: None,
            tool_call_text: true,
        }
    }
}

impl MinerGraph {
    fn rate_limiter(&self) -> Option<Arc<RateLimiter>> {
        self.limits.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New rate limits (`None`: off), from a configuration reload. The budgets start afresh: a
    /// client mid-burst gets the new quota, not the old one's remainder.
    pub fn set_rate_limits(&self, settings: Option<&crate::front_door::rate_limit::RateLimitSettings>) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = settings.map(|s| Arc::new(RateLimiter::new(s)));
    }

    /// The per-IP rate limit for `route`: `Err(seconds to wait)` when over. `names_a_validator`
    /// (the caller claims an allowed hotkey) selects the larger budget.
    pub fn check_ip_rate(&self, route: Route, ip: Option<IpAddr>, names_a_validator: bool) -> Result<(), u64> {
        match (self.rate_limiter(), ip) {
            (Some(limits), Some(ip)) => {
                let result = limits.check_ip(route, ip, names_a_validator);
                if result.is_err() {
                    self.metrics.rate_limited.with_label_values(&[route.name()]).inc();
                }
                result
            }
            _ => Ok(()),
        }
    }

    /// The per-hotkey rate limit, for an identity the door has verified.
    pub(crate) fn check_hotkey_rate(&self, hotkey: &str) -> Result<(), u64> {
        match self.rate_limiter() {
            Some(limits) => {
                let result = limits.check_hotkey(hotkey);
                if result.is_err() {
                    self.metrics.rate_limited.with_label_values(&["hotkey"]).inc();
                }
                result
            }
            None => Ok(()),
        }
    }
}
