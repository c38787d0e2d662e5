//! Rate limits, per client IP and per verified validator hotkey, with the Python miner's defaults
//! (PROTOCOL.md): per IP and minute, `/availability` 6, `/fiber/public-key` 6, `/fiber/key-exchange`
//! 10, `/fiber/challenge` 30, anything else 15 — and 20/20/30/120/60 for callers that name an
//! allowed validator; 60 a minute per validator hotkey.
//!
//! The per-hotkey limit is applied only to an identity the door has verified (a signature that
//! checked out, or a symmetric key that was found), so a stranger cannot spend a real validator's
//! budget by writing its hotkey into a header. GCRA (`governor`) rather than fixed windows: the
//! same numbers, without the burst at each window's edge.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// The routes with limits of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Availability,
    PublicKey,
    KeyExchange,
    Challenge,
    Other,
}

impl Route {
    pub const ALL: [Route; 5] =
        [Route::Availability, Route::PublicKey, Route::KeyExchange, Route::Challenge, Route::Other];

    /// The name used in `RATE_LIMITS` and in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Route::Availability => "availability",
            Route::PublicKey => "public_key",
            Route::KeyExchange => "key_exchange",
            Route::Challenge => "challenge",
            Route::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Requests per minute: for anyone, and for callers naming an allowed validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerMinute {
    pub public: u32,
    pub validator: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Indexed by [`Route`].
    pub per_ip: [PerMinute; 5],
    /// Per verified validator hotkey, over key exchanges and challenges together.
    pub per_hotkey: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        let pm = |public, validator| PerMinute { public, validator };
        Self { per_ip: [pm(6, 20), pm(6, 20), pm(10, 30), pm(30, 120), pm(15, 60)], per_hotkey: 60 }
    }
}

impl RateLimitSettings {
    /// Applies `RATE_LIMITS` text: `route=public/validator` pairs, comma-separated, e.g.
    /// `challenge=30/120,key_exchange=10/30`. Routes not named keep their value.
    pub fn apply(&mut self, text: &str) -> Result<(), String> {
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) =
                item.split_once('=').ok_or_else(|| format!("{item:?} is not route=public/validator"))?;
            let route = Route::ALL.into_iter().find(|r| r.name() == name.trim()).ok_or_else(|| {
                format!("unknown route {name:?} (availability, public_key, key_exchange, challenge, other)")
            })?;
            let (public, validator) = value.split_once('/').unwrap_or((value, value));
            let parse = |v: &str| v.trim().parse::<u32>().ok().filter(|n| *n > 0);
            let (Some(public), Some(validator)) = (parse(public), parse(validator)) else {
                return Err(format!("{item:?}: limits are whole numbers per minute, at least 1"));
            };
            self.per_ip[route.index()] = PerMinute { public, validator };
        }
        Ok(())
    }
}

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN))
}

/// The node's limiters. Memory is bounded by forgetting keys that are back at full budget.
pub struct RateLimiter {
    per_ip: Vec<(DefaultKeyedRateLimiter<IpAddr>, DefaultKeyedRateLimiter<IpAddr>)>,
    per_hotkey: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

/// How often (in checks) idle keys are swept.
const SWEEP_EVERY: u64 = 4096;

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self {
            per_ip: settings
                .per_ip
                .iter()
                .map(|pm| {
                    (
                        DefaultKeyedRateLimiter::keyed(quota(pm.public)),
                        DefaultKeyedRateLimiter::keyed(quota(pm.validator)),
                    )
                })
                .collect(),
            per_hotkey: DefaultKeyedRateLimiter::keyed(quota(settings.per_hotkey)),
            checks: AtomicU64::new(0),
        }
    }

    fn tick(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            for (a, b) in &self.per_ip {
                a.retain_recent();
                b.retain_recent();
            }
            self.per_hotkey.retain_recent();
        }
    }

    /// `Err(seconds to wait)` when `ip` is over its budget for `route`.
    pub fn check_ip(&self, route: Route, ip: IpAddr, names_a_validator: bool) -> Result<(), u64> {
        self.tick();
        let (public, validator) = &self.per_ip[route.index()];
        let limiter = if names_a_validator { validator } else { public };
        limiter.check_key(&ip).map_err(|not_until| retry_secs(not_until.wait_time_from(DefaultClock::default().now())))
    }

    /// `Err(seconds to wait)` when a verified validator is over its budget.
    pub fn check_hotkey(&self, hotkey: &str) -> Result<(), u64> {
        self.tick();
        self.per_hotkey
            .check_key(&hotkey.to_string())
            .map_err(|not_until| retry_secs(not_until.wait_time_from(DefaultClock::default().now())))
    }
}

fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_defaults_hold_and_validators_get_more() {
        let limits = RateLimiter::new(&RateLimitSettings::default());
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let ok = (0..100).filter(|_| limits.check_ip(Route::KeyExchange, ip, false).is_ok()).count();
        assert_eq!(ok, 10);
        let wait = limits.check_ip(Route::KeyExchange, ip, false).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        let ok = (0..100).filter(|_| limits.check_ip(Route::KeyExchange, ip, true).is_ok()).count();
        assert_eq!(ok, 30, "the validator tier is a budget of its own");
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        assert!(limits.check_ip(Route::KeyExchange, other, false).is_ok(), "per IP");
        let ok = (0..100).filter(|_| limits.check_hotkey("v1").is_ok()).count();
        assert_eq!(ok, 60);
    }

    #[test]
    fn rate_limits_text_overrides_named_routes_and_names_mistakes() {
        let mut s = RateLimitSettings::default();
        s.apply("challenge=5/50, availability=7").unwrap();
        assert_eq!(s.per_ip[Route::Challenge.index()], PerMinute { public: 5, validator: 50 });
        assert_eq!(s.per_ip[Route::Availability.index()], PerMinute { public: 7, validator: 7 });
        assert_eq!(s.per_ip[Route::KeyExchange.index()], PerMinute { public: 10, validator: 30 });
        assert!(s.apply("nope=1/2").unwrap_err().contains("unknown route"));
        assert!(s.apply("challenge=0/2").is_err());
        assert!(s.apply("challenge").is_err());
    }
}
