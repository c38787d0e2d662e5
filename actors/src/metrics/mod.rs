//! The miner's Prometheus metrics, one registry per node, shared by the actors and the HTTP layer.
//!
//! Every rejection path increments a labelled counter so that an operator can tell from `/metrics`
//! alone whether validators are failing handshakes, hitting expired keys or finding the miner full.

mod registrar;
mod validators;

use prometheus::{CounterVec, Gauge, GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use registrar::Registrar;
pub use validators::ValidatorMetrics;

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

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let latency_buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0];
        let m = Self {
            validators: ValidatorMetrics::new(&r, &latency_buckets),
            worker_info: r.gauges(
                "loosh_worker_info",
                "1 per configured worker, with where it runs",
                &["worker", "device"],
            ),
            axon: r.gauges("loosh_axon", "1 for the axon address the chain holds for us", &["address"]),
            challenges: r.counters("loosh_challenges_total", "Challenges by outcome", &["outcome"]),
            handshakes: r.counters("loosh_handshakes_total", "Key exchanges by outcome", &["outcome"]),
            rejected_requests: r.counters(
                "loosh_rejected_requests_total",
                "Requests refused for their body, by route and reason",
                &["route", "reason"],
            ),
            rate_limited: r.counters(
                "loosh_rate_limited_total",
                "Requests refused by a rate limit, by route",
                &["route"],
            ),
            exchange_addresses: r.counters(
                "loosh_exchange_addresses_total",
                "Completed key exchanges by the standing of their address for the validator that signed them",
                &["kind"],
            ),
            challenge_latency: r.histogram(
                "loosh_challenge_seconds",
                "Challenge handling time, arrival to encrypted reply",
                &latency_buckets,
            ),
            time_to_first_token: r.histogram(
                "loosh_time_to_first_token_seconds",
                "Arrival to first generated token",
                &latency_buckets,
            ),
            rsa_operations: r.counter("loosh_rsa_operations_total", "RSA private-key operations started"),
            tokens_generated: r.counter("loosh_tokens_generated_total", "Completion tokens generated"),
            prompt_tokens: r.counter("loosh_prompt_tokens_total", "Prompt tokens processed"),
            deadline_cuts: r.counter("loosh_deadline_cuts_total", "Generations cut short by the challenge deadline"),
            no_answer: r.counters(
                "loosh_no_answer_total",
                "Challenges refused for want of text instead of an empty 200",
                &["reason"],
            ),
            model_hints: r.counters(
                "loosh_challenge_model_hints_total",
                "Challenges by the model family their `model` hint names",
                &["model"],
            ),
            model_hint_labels: Default::default(),
            admission_refusals: r.counters(
                "loosh_admission_refusals_total",
                "Challenges refused at admission, by reason",
                &["reason"],
            ),
            hedges: r.counter("loosh_hedges_total", "Challenges raced on a second worker (late first token)"),
            hedge_wins: r.counters("loosh_hedge_wins_total", "Hedged challenges by the attempt that won", &["winner"]),
            reruns: r.counters(
                "loosh_challenge_reruns_total",
                "Challenges run once more after their worker died, by where",
                &["on"],
            ),
            in_flight: r.gauge("loosh_challenges_in_flight", "Challenges admitted and not yet answered"),
            available: r.gauge("loosh_available", "1 while /availability answers true"),
            workers_ready: r.gauge("loosh_workers_ready", "Backend workers ready to take work"),
            worker_restarts: r.counters("loosh_worker_restarts_total", "Backend worker restarts", &["worker"]),
            engine_stalls: r.counters(
                "loosh_engine_stalls_total",
                "Embedded engines failed because a step stalled",
                &["worker"],
            ),
            engine_process_exits: r.counters(
                "loosh_engine_process_exits_total",
                "Engine child processes that died, by reason (exit code or signal number)",
                &["worker", "reason"],
            ),
            worker_down: r.gauges(
                "loosh_worker_down",
                "1 while a worker stays down after exceeding its restart intensity",
                &["worker"],
            ),
            key_sessions: r.gauge("loosh_key_sessions", "Validators with a live key session"),
            chain_connected: r.gauge("loosh_chain_connected", "1 while connected to the chain"),
            chain_block: r.gauge("loosh_chain_block", "Best block seen"),
            chain_outages: r.counter("loosh_chain_outages_total", "Chain connections lost"),
            metagraph_synced_at: r
                .gauge("loosh_metagraph_sync_timestamp_seconds", "Unix time of the last metagraph sync"),
            metagraph_neurons: r.gauge("loosh_metagraph_neurons", "Neurons on the subnet at the last sync"),
            chain_validators: r.gauge("loosh_chain_validators", "Validators allowed by the chain"),
            chain_validator_axons: r
                .gauge("loosh_chain_validator_axons", "Chain validators whose axon reports an address"),
            our_uid: r.gauge("loosh_uid", "Our uid on the subnet (-1: not registered)"),
            our_incentive: r.ratio("loosh_incentive_ratio", "Our incentive (0-1) at the last sync"),
            challenge_api_polls: r.counters(
                "loosh_challenge_api_polls_total",
                "Challenge API validator-list polls by result",
                &["result"],
            ),
            challenge_api_validators: r.gauge("loosh_challenge_api_validators", "Validators on the Challenge API list"),
            axon_posts: r.counters("loosh_axon_posts_total", "serve_axon attempts by result", &["result"]),
            engine_step_seconds: r.seconds(
                "loosh_engine_step_seconds_total",
                "Embedded engine step time by worker and phase",
                &["worker", "phase"],
            ),
            engine_steps: r.counters("loosh_engine_steps_total", "Embedded engine decode steps", &["worker"]),
            engine_tokens: r.counters(
                "loosh_engine_tokens_total",
                "Completion tokens sampled by an embedded engine",
                &["worker"],
            ),
            engine_reused_prompt_tokens: r.counters(
                "loosh_engine_reused_prompt_tokens_total",
                "Prompt tokens reused from the KV cache",
                &["worker"],
            ),
            engine_tokens_per_second: r.ratios(
                "loosh_engine_tokens_per_second",
                "Embedded engine tokens/s over its last busy second",
                &["worker"],
            ),
            registry,
        };
        m.show_common_outcomes_at_zero();
        m
    }

    /// Makes the common outcomes visible at zero, so that dashboards and alerts see each series
    /// from the start (an alert on a rate cannot fire on a series that does not exist yet).
    fn show_common_outcomes_at_zero(&self) {
        let zero = |family: &IntCounterVec, labels: &[&str]| {
            for l in labels {
                family.with_label_values(&[l]);
            }
        };
        let outcomes = [
            "ok",
            "unauthorized",
            "unknown_key",
            "bad_token",
            "bad_request",
            "busy",
            "unavailable",
            "no_answer",
            "error",
        ];
        zero(&self.challenges, &outcomes);
        zero(&self.no_answer, &["no_token", "empty", "tool_calls_only"]);
        zero(&self.admission_refusals, &["full", "too_late", "wait", "slowdown"]);
        zero(&self.exchange_addresses, &["first", "known", "new", "elsewhere"]);
        zero(&self.hedge_wins, &["first", "hedge"]);
        let handshakes = [
            "ok",
            "unauthorized",
            "replay",
            "bad_signature",
            "stale_timestamp",
            "bad_key",
            "malformed",
            "busy",
            "unavailable",
        ];
        zero(&self.handshakes, &handshakes);
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
