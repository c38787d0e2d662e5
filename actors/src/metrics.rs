//! The miner's Prometheus metrics, one registry per node, shared by the actors and the HTTP layer.
//!
//! Every rejection path increments a labelled counter so that an operator can tell from `/metrics`
//! alone whether validators are failing handshakes, hitting expired keys or finding the miner full.

use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Challenges by outcome: ok, unauthorized, unknown_key, bad_token, bad_request, busy, unavailable, error.
    pub challenges: IntCounterVec,
    /// Key exchanges by outcome: ok, unauthorized, replay, bad_signature, stale_timestamp, bad_key, malformed, busy, unavailable.
    pub handshakes: IntCounterVec,
    /// HTTP requests refused before reaching a handler (oversized or malformed bodies), by route.
    pub rejected_requests: IntCounterVec,
    pub challenge_latency: Histogram,
    /// Requests refused by a rate limit, by route (or `hotkey` for the per-validator limit).
    pub rate_limited: IntCounterVec,
    /// Completed key exchanges by where they came from, for the validator that signed them:
    /// `first` (its first proven address), `known` (one it had proven), `new` (a further address:
    /// a validator that moved, or a relayer holding its signed exchange), `elsewhere` (an address
    /// its reported ones do not include). A bounded label set: no hotkeys, no addresses.
    pub exchange_addresses: IntCounterVec,
    /// RSA private-key operations started (one per genuine key exchange; a replay flood must not move it).
    pub rsa_operations: IntCounter,
    pub time_to_first_token: Histogram,
    pub tokens_generated: IntCounter,
    pub prompt_tokens: IntCounter,
    /// Generations stopped by the deadline rather than the model or max_tokens.
    pub deadline_cuts: IntCounter,
    /// Challenges answered with an error instead of an empty 200, by reason: `no_token` (none by
    /// the deadline) or `empty` (the model ended without text).
    pub no_answer: IntCounterVec,
    /// The `model` hint each challenge carries, by family (`qwen2.5-32b-instruct` from
    /// `Qwen/Qwen2.5-32B-Instruct`): the validators' consensus cluster forms around the model most
    /// miners serve, and the hint is how a miner learns which. At most [`MODEL_HINT_LABELS`]
    /// distinct labels, then `other`.
    pub model_hints: IntCounterVec,
    model_hint_labels: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Challenges refused at admission, by reason: `full` (no queue room) or `too_late` (no worker
    /// can start it in time to produce a useful answer before its deadline).
    pub admission_refusals: IntCounterVec,
    /// Second attempts started on an idle worker because the first token was late.
    pub hedges: IntCounter,
    /// Hedged challenges by which attempt produced the first token: `first` or `hedge`.
    pub hedge_wins: IntCounterVec,
    /// Challenges run once more after their worker died, by where: `sibling` or `restarted` (the
    /// same worker, back with a fresh engine).
    pub reruns: IntCounterVec,
    pub in_flight: IntGauge,
    /// 1 while `/availability` answers `true` (read at each scrape and each poll).
    pub available: IntGauge,
    pub workers_ready: IntGauge,
    pub worker_restarts: IntCounterVec,
    /// Embedded engines failed by the watchdog because a step stalled.
    pub engine_stalls: IntCounterVec,
    /// Engine child processes that died, by worker and reason (`exit N`, `signal N`: bounded).
    pub engine_process_exits: IntCounterVec,
    /// 1 while a worker is permanently down (restart intensity exceeded).
    pub worker_down: IntGaugeVec,
    pub key_sessions: IntGauge,
    /// 1 while the chain heartbeat holds a live connection.
    pub chain_connected: IntGauge,
    pub chain_block: IntGauge,
    pub chain_outages: IntCounter,
    /// Unix time of the last metagraph sync (its age is `time() - this`); `_timestamp_seconds`
    /// as Prometheus names points in time.
    pub metagraph_synced_at: IntGauge,
    pub metagraph_neurons: IntGauge,
    /// Validators the chain allows (permit and minimum stake).
    pub chain_validators: IntGauge,
    /// Chain validators whose axon gives an address (their reported home for shares and strict mode).
    pub chain_validator_axons: IntGauge,
    /// Our uid on the subnet, -1 when not registered.
    pub our_uid: IntGauge,
    /// Our incentive as the 0-1 share the chain's u16 fixed point stands for.
    pub our_incentive: Gauge,
    /// serve_axon attempts by result: ok, rate_limited, error.
    pub axon_posts: IntCounterVec,
    pub challenge_api_polls: IntCounterVec,
    pub challenge_api_validators: IntGauge,
    /// Embedded engines' step time by worker and phase (decode, sampling, rest): which of the
    /// GPU, the sampler or our own bookkeeping limits a worker.
    pub engine_step_seconds: CounterVec,
    pub engine_steps: IntCounterVec,
    /// Completion tokens sampled by each embedded engine.
    pub engine_tokens: IntCounterVec,
    /// Prompt tokens taken from the KV cache instead of being prefilled, by worker.
    pub engine_reused_prompt_tokens: IntCounterVec,
    /// Tokens per second of each embedded engine over its last busy second.
    pub engine_tokens_per_second: GaugeVec,
    /// Per validator, labelled only for hotkeys on an allowed list (chain, Challenge API,
    /// `VALIDATOR_HOTKEYS`) and dropped when one leaves it: a bounded set, never a label per caller.
    pub validators: ValidatorMetrics,
    /// 1 for the axon address the chain holds for us (as last read or posted).
    pub axon: IntGaugeVec,
    /// 1 per configured worker, with where it runs (a device, or an OpenAI-compatible server).
    pub worker_info: IntGaugeVec,
}

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
    fn new(latency_buckets: Vec<f64>) -> Self {
        let gauge = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["validator"]).unwrap();
        Self {
            availability: IntCounterVec::new(
                Opts::new(
                    "loosh_validator_availability_polls_total",
                    "`/availability` answers to a validator, by what they said",
                ),
                &["validator", "available"],
            )
            .unwrap(),
            stake: gauge("loosh_validator_stake_alpha", "A permitted validator's alpha stake at the last sync"),
            last_key_exchange: gauge(
                "loosh_validator_last_key_exchange_timestamp_seconds",
                "Unix time of a validator's last successful key exchange",
            ),
            last_challenge: gauge(
                "loosh_validator_last_challenge_timestamp_seconds",
                "Unix time of a validator's last challenge",
            ),
            challenges: IntCounterVec::new(
                Opts::new("loosh_validator_challenges_total", "Challenges by validator and outcome"),
                &["validator", "outcome"],
            )
            .unwrap(),
            latency: HistogramVec::new(
                HistogramOpts::new("loosh_validator_challenge_seconds", "Challenge handling time by validator")
                    .buckets(latency_buckets),
                &["validator"],
            )
            .unwrap(),
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

    fn register(&self, registry: &Registry) {
        for g in [&self.stake, &self.last_key_exchange, &self.last_challenge] {
            registry.register(Box::new(g.clone())).unwrap();
        }
        registry.register(Box::new(self.challenges.clone())).unwrap();
        registry.register(Box::new(self.latency.clone())).unwrap();
        registry.register(Box::new(self.availability.clone())).unwrap();
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency_buckets =
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0];
        let m = Self {
            validators: ValidatorMetrics::new(latency_buckets.clone()),
            worker_info: IntGaugeVec::new(
                Opts::new("loosh_worker_info", "1 per configured worker, with where it runs"),
                &["worker", "device"],
            )
            .unwrap(),
            axon: IntGaugeVec::new(
                Opts::new("loosh_axon", "1 for the axon address the chain holds for us"),
                &["address"],
            )
            .unwrap(),
            challenges: IntCounterVec::new(Opts::new("loosh_challenges_total", "Challenges by outcome"), &["outcome"])
                .unwrap(),
            handshakes: IntCounterVec::new(
                Opts::new("loosh_handshakes_total", "Key exchanges by outcome"),
                &["outcome"],
            )
            .unwrap(),
            rejected_requests: IntCounterVec::new(
                Opts::new("loosh_rejected_requests_total", "Requests refused for their body, by route and reason"),
                &["route", "reason"],
            )
            .unwrap(),
            rate_limited: IntCounterVec::new(
                Opts::new("loosh_rate_limited_total", "Requests refused by a rate limit, by route"),
                &["route"],
            )
            .unwrap(),
            exchange_addresses: IntCounterVec::new(
                Opts::new(
                    "loosh_exchange_addresses_total",
                    "Completed key exchanges by the standing of their address for the validator that signed them",
                ),
                &["kind"],
            )
            .unwrap(),
            challenge_latency: Histogram::with_opts(
                HistogramOpts::new("loosh_challenge_seconds", "Challenge handling time, arrival to encrypted reply")
                    .buckets(latency_buckets.clone()),
            )
            .unwrap(),
            time_to_first_token: Histogram::with_opts(
                HistogramOpts::new("loosh_time_to_first_token_seconds", "Arrival to first generated token")
                    .buckets(latency_buckets),
            )
            .unwrap(),
            rsa_operations: IntCounter::new("loosh_rsa_operations_total", "RSA private-key operations started")
                .unwrap(),
            tokens_generated: IntCounter::new("loosh_tokens_generated_total", "Completion tokens generated").unwrap(),
            prompt_tokens: IntCounter::new("loosh_prompt_tokens_total", "Prompt tokens processed").unwrap(),
            deadline_cuts: IntCounter::new(
                "loosh_deadline_cuts_total",
                "Generations cut short by the challenge deadline",
            )
            .unwrap(),
            no_answer: IntCounterVec::new(
                Opts::new("loosh_no_answer_total", "Challenges refused for want of text instead of an empty 200"),
                &["reason"],
            )
            .unwrap(),
            model_hints: IntCounterVec::new(
                Opts::new(
                    "loosh_challenge_model_hints_total",
                    "Challenges by the model family their `model` hint names",
                ),
                &["model"],
            )
            .unwrap(),
            model_hint_labels: Default::default(),
            admission_refusals: IntCounterVec::new(
                Opts::new("loosh_admission_refusals_total", "Challenges refused at admission, by reason"),
                &["reason"],
            )
            .unwrap(),
            hedges: IntCounter::new("loosh_hedges_total", "Challenges raced on a second worker (late first token)")
                .unwrap(),
            hedge_wins: IntCounterVec::new(
                Opts::new("loosh_hedge_wins_total", "Hedged challenges by the attempt that won"),
                &["winner"],
            )
            .unwrap(),
            reruns: IntCounterVec::new(
                Opts::new("loosh_challenge_reruns_total", "Challenges run once more after their worker died, by where"),
                &["on"],
            )
            .unwrap(),
            in_flight: IntGauge::new("loosh_challenges_in_flight", "Challenges admitted and not yet answered").unwrap(),
            available: IntGauge::new("loosh_available", "1 while /availability answers true").unwrap(),
            workers_ready: IntGauge::new("loosh_workers_ready", "Backend workers ready to take work").unwrap(),
            worker_restarts: IntCounterVec::new(
                Opts::new("loosh_worker_restarts_total", "Backend worker restarts"),
                &["worker"],
            )
            .unwrap(),
            engine_stalls: IntCounterVec::new(
                Opts::new("loosh_engine_stalls_total", "Embedded engines failed because a step stalled"),
                &["worker"],
            )
            .unwrap(),
            engine_process_exits: IntCounterVec::new(
                Opts::new(
                    "loosh_engine_process_exits_total",
                    "Engine child processes that died, by reason (exit code or signal number)",
                ),
                &["worker", "reason"],
            )
            .unwrap(),
            worker_down: IntGaugeVec::new(
                Opts::new("loosh_worker_down", "1 while a worker stays down after exceeding its restart intensity"),
                &["worker"],
            )
            .unwrap(),
            key_sessions: IntGauge::new("loosh_key_sessions", "Validators with a live key session").unwrap(),
            chain_connected: IntGauge::new("loosh_chain_connected", "1 while connected to the chain").unwrap(),
            chain_block: IntGauge::new("loosh_chain_block", "Best block seen").unwrap(),
            chain_outages: IntCounter::new("loosh_chain_outages_total", "Chain connections lost").unwrap(),
            metagraph_synced_at: IntGauge::new(
                "loosh_metagraph_sync_timestamp_seconds",
                "Unix time of the last metagraph sync",
            )
            .unwrap(),
            metagraph_neurons: IntGauge::new("loosh_metagraph_neurons", "Neurons on the subnet at the last sync")
                .unwrap(),
            chain_validators: IntGauge::new("loosh_chain_validators", "Validators allowed by the chain").unwrap(),
            chain_validator_axons: IntGauge::new(
                "loosh_chain_validator_axons",
                "Chain validators whose axon reports an address",
            )
            .unwrap(),
            our_uid: IntGauge::new("loosh_uid", "Our uid on the subnet (-1: not registered)").unwrap(),
            our_incentive: Gauge::new("loosh_incentive_ratio", "Our incentive (0-1) at the last sync").unwrap(),
            challenge_api_polls: IntCounterVec::new(
                Opts::new("loosh_challenge_api_polls_total", "Challenge API validator-list polls by result"),
                &["result"],
            )
            .unwrap(),
            challenge_api_validators: IntGauge::new(
                "loosh_challenge_api_validators",
                "Validators on the Challenge API list",
            )
            .unwrap(),
            axon_posts: IntCounterVec::new(
                Opts::new("loosh_axon_posts_total", "serve_axon attempts by result"),
                &["result"],
            )
            .unwrap(),
            engine_step_seconds: CounterVec::new(
                Opts::new("loosh_engine_step_seconds_total", "Embedded engine step time by worker and phase"),
                &["worker", "phase"],
            )
            .unwrap(),
            engine_steps: IntCounterVec::new(
                Opts::new("loosh_engine_steps_total", "Embedded engine decode steps"),
                &["worker"],
            )
            .unwrap(),
            engine_tokens: IntCounterVec::new(
                Opts::new("loosh_engine_tokens_total", "Completion tokens sampled by an embedded engine"),
                &["worker"],
            )
            .unwrap(),
            engine_reused_prompt_tokens: IntCounterVec::new(
                Opts::new("loosh_engine_reused_prompt_tokens_total", "Prompt tokens reused from the KV cache"),
                &["worker"],
            )
            .unwrap(),
            engine_tokens_per_second: GaugeVec::new(
                Opts::new("loosh_engine_tokens_per_second", "Embedded engine tokens/s over its last busy second"),
                &["worker"],
            )
            .unwrap(),
            registry,
        };
        m.registry.register(Box::new(m.engine_step_seconds.clone())).unwrap();
        m.registry.register(Box::new(m.engine_tokens_per_second.clone())).unwrap();
        for c in [&m.engine_steps, &m.engine_tokens, &m.engine_reused_prompt_tokens] {
            m.registry.register(Box::new(c.clone())).unwrap();
        }
        for c in [
            &m.challenges,
            &m.handshakes,
            &m.model_hints,
            &m.exchange_addresses,
            &m.worker_restarts,
            &m.engine_stalls,
            &m.engine_process_exits,
            &m.no_answer,
            &m.admission_refusals,
            &m.hedge_wins,
            &m.reruns,
        ] {
            m.registry.register(Box::new(c.clone())).unwrap();
        }
        m.registry.register(Box::new(m.rejected_requests.clone())).unwrap();
        m.registry.register(Box::new(m.rate_limited.clone())).unwrap();
        m.registry.register(Box::new(m.challenge_latency.clone())).unwrap();
        m.registry.register(Box::new(m.time_to_first_token.clone())).unwrap();
        for c in [&m.tokens_generated, &m.prompt_tokens, &m.deadline_cuts, &m.rsa_operations, &m.hedges] {
            m.registry.register(Box::new(c.clone())).unwrap();
        }
        for g in [&m.in_flight, &m.available, &m.workers_ready, &m.key_sessions] {
            m.registry.register(Box::new(g.clone())).unwrap();
        }
        m.registry.register(Box::new(m.worker_down.clone())).unwrap();
        m.registry.register(Box::new(m.chain_outages.clone())).unwrap();
        m.registry.register(Box::new(m.axon_posts.clone())).unwrap();
        m.registry.register(Box::new(m.challenge_api_polls.clone())).unwrap();
        m.registry.register(Box::new(m.challenge_api_validators.clone())).unwrap();
        for g in [
            &m.chain_connected,
            &m.chain_block,
            &m.metagraph_synced_at,
            &m.metagraph_neurons,
            &m.chain_validators,
            &m.chain_validator_axons,
            &m.our_uid,
        ] {
            m.registry.register(Box::new(g.clone())).unwrap();
        }
        m.registry.register(Box::new(m.our_incentive.clone())).unwrap();
        m.validators.register(&m.registry);
        m.registry.register(Box::new(m.axon.clone())).unwrap();
        m.registry.register(Box::new(m.worker_info.clone())).unwrap();
        // Make the common outcomes visible at zero, so dashboards and alerts see the series from the start.
        for o in [
            "ok",
            "unauthorized",
            "unknown_key",
            "bad_token",
            "bad_request",
            "busy",
            "unavailable",
            "no_answer",
            "error",
        ] {
            m.challenges.with_label_values(&[o]);
        }
        for r in ["no_token", "empty", "tool_calls_only"] {
            m.no_answer.with_label_values(&[r]);
        }
        for r in ["full", "too_late", "wait", "slowdown"] {
            m.admission_refusals.with_label_values(&[r]);
        }
        for k in ["first", "known", "new", "elsewhere"] {
            m.exchange_addresses.with_label_values(&[k]);
        }
        for w in ["first", "hedge"] {
            m.hedge_wins.with_label_values(&[w]);
        }
        for o in [
            "ok",
            "unauthorized",
            "replay",
            "bad_signature",
            "stale_timestamp",
            "bad_key",
            "malformed",
            "busy",
            "unavailable",
        ] {
            m.handshakes.with_label_values(&[o]);
        }
        m
    }

    /// Counts a challenge's `model` hint under a bounded label (see [`Metrics::model_hints`]).
    pub fn count_model_hint(&self, hint: Option<&str>) {
        let family = model_family(hint.unwrap_or(""));
        let label = {
            let mut seen = self.model_hint_labels.lock().unwrap_or_else(|e| e.into_inner());
            if seen.contains(&family) || (seen.len() < MODEL_HINT_LABELS && seen.insert(family.clone())) {
                family
            } else {
                "other".to_string()
            }
        };
        self.model_hints.with_label_values(&[&label]).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Distinct `model` hint labels kept before the rest count as `other`.
pub const MODEL_HINT_LABELS: usize = 16;

/// A model hint's family: the name without its organisation, lowercased, only `[a-z0-9.-]`, at
/// most 48 characters (`Qwen/Qwen2.5-32B-Instruct` → `qwen2.5-32b-instruct`); `none` when absent.
pub fn model_family(hint: &str) -> String {
    let name = hint.trim().rsplit('/').next().unwrap_or("");
    let family: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .take(48)
        .collect();
    if family.is_empty() {
        "none".to_string()
    } else {
        family
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_hints_are_counted_by_family_under_a_bounded_label_set() {
        assert_eq!(model_family("Qwen/Qwen2.5-32B-Instruct"), "qwen2.5-32b-instruct");
        assert_eq!(model_family(" meta-llama/Llama-3.1-8B-Instruct "), "llama-3.1-8b-instruct");
        assert_eq!(model_family("x\"}{bad label"), "xbadlabel");
        assert_eq!(model_family(""), "none");
        let m = Metrics::new();
        m.count_model_hint(Some("Qwen/Qwen2.5-32B-Instruct"));
        m.count_model_hint(Some("qwen/qwen2.5-32b-instruct"));
        for i in 0..40 {
            m.count_model_hint(Some(&format!("org/model-{i}")));
        }
        assert_eq!(m.model_hints.with_label_values(&["qwen2.5-32b-instruct"]).get(), 2);
        assert_eq!(m.model_hints.with_label_values(&["other"]).get(), 40 - (MODEL_HINT_LABELS as u64 - 1));
    }
}
