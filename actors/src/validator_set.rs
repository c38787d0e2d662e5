//! Changing who is allowed, with what follows from it: a validator that stops being allowed loses
//! its keys (its next challenge is refused) and its per-validator `/metrics` series (a validator
//! we no longer serve must not linger as one we fail to answer).
//!
//! Four places change the allowed set — the chain heartbeat, the Challenge API poller, and a
//! reload's `VALIDATOR_HOTKEYS` and `VALIDATOR_DENY_HOTKEYS` — and each used to repeat "replace,
//! then revoke"; one copy forgot the metrics. They all go through [`ValidatorSet`] now.

use std::collections::HashSet;
use std::sync::Arc;

use crate::authorization::{Source, ValidatorAuth};
use crate::metrics::Metrics;
use crate::session::known_peers::KnownPeers;
use crate::session::registry::KeyStore;

/// The allowed set and what hangs off each allowed validator: its keys, its metrics and the
/// addresses it proved itself from. Cheap to clone (handles only); the chain actors hold one in
/// their arguments.
#[derive(Clone)]
pub struct ValidatorSet {
    pub auth: Arc<ValidatorAuth>,
    pub keys: KeyStore,
    pub metrics: Arc<Metrics>,
    pub known_peers: Arc<KnownPeers>,
}

/// Why a source's update dropped a validator, for the log line.
fn reason(source: Source) -> &'static str {
    match source {
        Source::Static => "removed from VALIDATOR_HOTKEYS",
        Source::Chain => "lost its validator permit or its stake fell below MIN_VALIDATOR_STAKE",
        Source::ChallengeApi => "left the Challenge API list",
    }
}

impl ValidatorSet {
    pub fn new(auth: Arc<ValidatorAuth>, keys: KeyStore, metrics: Arc<Metrics>, known_peers: Arc<KnownPeers>) -> Self {
        Self { auth, keys, metrics, known_peers }
    }

    /// Replaces `source`'s set (see [`ValidatorAuth::replace`], which keeps the last good set
    /// when a read comes back empty) and drops every validator it leaves unallowed; returns them.
    pub fn replace(&self, source: Source, hotkeys: HashSet<String>) -> Vec<String> {
        let dropped = self.auth.replace(source, hotkeys);
        for hotkey in &dropped {
            self.drop_validator(hotkey, reason(source));
        }
        dropped
    }

    /// Replaces the deny list (`VALIDATOR_DENY_HOTKEYS`) and drops every validator it newly
    /// denies; returns them.
    pub fn deny(&self, hotkeys: HashSet<String>) -> Vec<String> {
        let denied = self.auth.set_denied(hotkeys);
        for hotkey in &denied {
            self.drop_validator(hotkey, "listed in VALIDATOR_DENY_HOTKEYS");
        }
        denied
    }

    /// Its keys stop reading as live at once; its series leave `/metrics`; its proven addresses no
    /// longer exempt its `/availability` polls from the per-address limit.
    fn drop_validator(&self, hotkey: &str, reason: &str) {
        tracing::info!(validator = %hotkey, reason, "validator no longer allowed; dropping its keys and its metrics");
        self.keys.revoke(hotkey);
        self.metrics.validators.forget(hotkey);
        self.known_peers.forget(hotkey);
    }
}
