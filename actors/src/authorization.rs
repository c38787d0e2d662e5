//! Who may key-exchange and send challenges: checked before any cryptography.
//!
//! The static list (`VALIDATOR_HOTKEYS`) is one source; the chain's validator permits will feed the
//! same set. An empty set with the whitelist enabled admits nobody, and says so in the logs: the
//! Python miner silently lets everyone in when its list is empty, which we do not copy.

use dashmap::DashSet;

pub struct ValidatorAuth {
    enabled: bool,
    allowed: DashSet<String>,
}

impl ValidatorAuth {
    pub fn new(enabled: bool, hotkeys: impl IntoIterator<Item = String>) -> Self {
        let allowed: DashSet<String> =
            hotkeys.into_iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect();
        if enabled && allowed.is_empty() {
            tracing::warn!("validator whitelist is enabled and empty: every validator will get 403");
        } else if !enabled {
            tracing::warn!("validator whitelist is disabled: any hotkey may key-exchange and send challenges");
        }
        Self { enabled, allowed }
    }

    /// Admits every hotkey (dev mode and tests).
    pub fn allow_all() -> Self {
        Self { enabled: false, allowed: DashSet::new() }
    }

    pub fn is_allowed(&self, hotkey: &str) -> bool {
        !self.enabled || self.allowed.contains(hotkey)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn len(&self) -> usize {
        self.allowed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }
}
