//! Validator key sessions: who holds which symmetric key, and which nonces were already used.

pub mod key_session;
pub mod known_peers;
pub mod live_keys;
pub mod registry;

use std::time::Duration;

/// The knobs of the key store, from `FIBER_*` settings.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// `FIBER_KEY_TTL_SECONDS`: how long a key lives after its exchange.
    pub key_ttl: Duration,
    /// Extra life past the TTL, because the validator starts its own clock a little after ours.
    pub key_grace: Duration,
    /// Nonces remembered per validator (each for as long as the front door asks: until its
    /// timestamp leaves the accepted window) before further exchanges are refused (bounded memory).
    pub max_nonces: usize,
    /// Live keys kept per validator; the oldest is dropped past this.
    pub max_keys: usize,
    pub sweep_every: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            key_ttl: Duration::from_secs(3600),
            key_grace: Duration::from_secs(60),
            max_nonces: 4096,
            max_keys: 64,
            sweep_every: key_session::DEFAULT_SWEEP_EVERY,
        }
    }
}
