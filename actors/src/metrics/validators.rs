//! The per-validator series: why a validator sends no work, readable from `/metrics` alone.
//! Labelled only for hotkeys on an allowed list and dropped when one leaves it, so the label set
//! stays bounded whoever calls.

use prometheus::{GaugeVec, HistogramVec, IntCounterVec};

use super::registrar::Registrar;

/// Why a validator sends no work, from `/metrics` alone: when it last exchanged a key and sent a
/// challenge, how its challenges ended, how long they took, and the stake the chain gives it.
pub struct ValidatorMetrics {
    /// `/availability` answers to each validator, by answer (`true`, `false`): selection as the
    /// validator sees it (3 h without `true` zeroes its weight).
    pub availability: IntCounterVec,
    pub stake: GaugeVec,
    pub last_key_exchange: GaugeVec,
    pub last_challenge: GaugeVec,
    pub challenges: IntCounterVec,
    pub latency: HistogramVec,
}

impl ValidatorMetrics {
    pub(super) fn new(r: &Registrar, latency_buckets: &[f64]) -> Self {
        let gauge = |name: &str, help: &str| r.ratios(name, help, &["validator"]);
        Self {
            availability: r.counters(
                "loosh_validator_availability_polls_total",
                "`/availability` answers to a validator, by what they said",
                &["validator", "available"],
            ),
            stake: gauge("loosh_validator_stake_alpha", "A permitted validator's alpha stake at the last sync"),
            last_key_exchange: gauge(
                "loosh_validator_last_key_exchange_timestamp_seconds",
                "Unix time of a validator's last successful key exchange",
            ),
            last_challenge: gauge(
                "loosh_validator_last_challenge_timestamp_seconds",
                "Unix time of a validator's last challenge",
            ),
            challenges: r.counters(
                "loosh_validator_challenges_total",
                "Challenges by validator and outcome",
                &["validator", "outcome"],
            ),
            latency: r.histograms(
                "loosh_validator_challenge_seconds",
                "Challenge handling time by validator",
                &["validator"],
                latency_buckets,
            ),
        }
    }

    /// A verified key exchange by `validator` (a listed hotkey; see [`Metrics::validators`]).
    pub fn key_exchanged(&self, validator: &str) {
        self.last_key_exchange.with_label_values(&[validator]).set(crate::protocol::messages::unix_time_f64());
    }

    /// A challenge from `validator` (a listed hotkey) that ended with `outcome` after `secs`.
    pub fn challenge(&self, validator: &str, outcome: &str, secs: f64) {
        self.last_challenge.with_label_values(&[validator]).set(crate::protocol::messages::unix_time_f64());
        self.challenges.with_label_values(&[validator, outcome]).inc();
        self.latency.with_label_values(&[validator]).observe(secs);
    }

    /// Makes a listed validator's answered count and availability answers visible at zero before
    /// it sends anything: a validator that never gets an answer from us must show as one (24 h
    /// without a sample of ours zeroes our weight from it), not as a missing series no alert sees.
    pub fn listed(&self, validator: &str) {
        self.challenges.with_label_values(&[validator, "ok"]);
        for answer in ["true", "false"] {
            self.availability.with_label_values(&[validator, answer]);
        }
    }

    /// An `/availability` answer to `validator` (a listed hotkey).
    pub fn availability_answered(&self, validator: &str, available: bool) {
        self.availability.with_label_values(&[validator, if available { "true" } else { "false" }]).inc();
    }

    /// Drops every series of a validator that is no longer allowed.
    pub fn forget(&self, validator: &str) {
        for g in [&self.stake, &self.last_key_exchange, &self.last_challenge] {
            let _ = g.remove_label_values(&[validator]);
        }
        let _ = self.latency.remove_label_values(&[validator]);
        // One series per outcome seen; the labels to remove are those present.
        let families = prometheus::core::Collector::collect(&self.challenges);
        for metric in families.iter().flat_map(|f| f.get_metric()) {
            let labels: std::collections::HashMap<&str, &str> =
                metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
            if labels.get("validator") == Some(&validator) {
                let _ = self.challenges.remove_label_values(&[validator, labels["outcome"]]);
            }
        }
        for answer in ["true", "false"] {
            let _ = self.availability.remove_label_values(&[validator, answer]);
        }
    }
}
