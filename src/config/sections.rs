//! The configuration's sections that are settings of the engine (sessions, front door, scheduler,
//! chain) or of the HTTP server, each read from its variables by one function into the very type
//! that part takes, so that a setting is declared once, beside the code it steers.

use std::time::Duration;

use loosh_actors::settings::{
    AdmissionSettings, ChainSettings, DoorSettings, HedgeSettings, RateLimitSettings, SchedulerSettings,
    SessionSettings, DEFAULT_KEEP_SAMPLE_EVERY, DEFAULT_MAX_WAIT, DEFAULT_RSA_SLOTS,
};

use super::source::{checked, Source};
use super::{ConfigError, DEFAULT_METRICS_PORT};
use crate::http::state::{HttpSettings, DEFAULT_KEEP_ALIVE_SECS};

/// `FIBER_KEY_TTL_SECONDS` and `FIBER_KEY_GRACE_SECONDS`: how long a validator's key lives.
pub(super) fn sessions(src: &Source) -> Result<SessionSettings, ConfigError> {
    let ttl = src.secs("FIBER_KEY_TTL_SECONDS", 3600)?;
    checked("FIBER_KEY_TTL_SECONDS", ttl.as_secs(), !ttl.is_zero(), "at least 1 second")?;
    Ok(SessionSettings {
        key_ttl: ttl,
        key_grace: src.secs("FIBER_KEY_GRACE_SECONDS", 60)?,
        ..SessionSettings::default()
    })
}

/// What the front door applies to each request. `max_in_flight` is `MAX_CONCURRENT_REQUESTS`, of
/// which one validator gets three quarters by default. The rate limits are left `None`: whether
/// they apply is decided when the node starts (`--dev`) and on SIGHUP ([`super::Config::active_rate_limits`]).
pub(super) fn door(src: &Source, max_in_flight: usize) -> Result<DoorSettings, ConfigError> {
    let temperature: f32 = src.parse("DEFAULT_TEMPERATURE", 0.7, "a number from 0 to 2")?;
    checked("DEFAULT_TEMPERATURE", temperature, (0.0..=2.0).contains(&temperature), "a number from 0 to 2")?;
    let top_p: f32 = src.parse("DEFAULT_TOP_P", 0.95, "a number in (0, 1]")?;
    checked("DEFAULT_TOP_P", top_p, top_p > 0.0 && top_p <= 1.0, "a number in (0, 1]")?;
    let deadline_ms: u64 = src.parse("CHALLENGE_DEADLINE_MS", 50_000, "milliseconds, from 1000 to 59000")?;
    let in_range = (1000..=59_000).contains(&deadline_ms);
    checked(
        "CHALLENGE_DEADLINE_MS",
        deadline_ms,
        in_range,
        "milliseconds, from 1000 to 59000 (the validator cancels at 60 s)",
    )?;
    // A key-exchange timestamp may be as old as the replay window and the clock skew together:
    // nonces are remembered that long, so every timestamp accepted is covered by replay protection.
    let replay_window = src.secs("FIBER_HANDSHAKE_TIMEOUT_SECONDS", 30)?;
    let skew = src.secs("FIBER_TIMESTAMP_SKEW_SECONDS", 300)?;
    Ok(DoorSettings {
        fernet_ttl_secs: 3600,
        deadline: Duration::from_millis(deadline_ms),
        max_timestamp_age: replay_window.saturating_add(skew),
        max_timestamp_ahead: skew,
        default_max_tokens: src.parse("DEFAULT_MAX_TOKENS", 512, "a whole number of tokens")?,
        default_temperature: temperature,
        default_top_p: top_p,
        rsa_slots: src.parse("RSA_SLOTS", DEFAULT_RSA_SLOTS, "a whole number of at least 1")?.max(1),
        verify_slots: src.parse("SIGNATURE_SLOTS", 4, "a whole number of at least 1")?.max(1),
        max_in_flight_per_validator: src
            .parse(
                "MAX_IN_FLIGHT_PER_VALIDATOR",
                // Three quarters: a busy validator still fills most of the node, and a quarter
                // stays for the others.
                max_in_flight - max_in_flight / 4,
                "a number of challenges (at least 1)",
            )?
            .max(1),
        rate_limits: None,
        tool_call_text: src.boolean("TOOL_CALL_TEXT", false)?,
    })
}

/// `RATE_LIMIT_ENABLED` as set (`None`: unset), and the limits of `RATE_LIMITS` over the Python
/// miner's per-IP defaults with `HOTKEY_RATE_LIMIT_PER_MINUTE`, kept even while off so that a
/// SIGHUP can turn them on.
pub(super) fn rate_limits(src: &Source) -> Result<(Option<bool>, RateLimitSettings), ConfigError> {
    let enabled = match src.get("RATE_LIMIT_ENABLED") {
        None => None,
        Some(_) => Some(src.boolean("RATE_LIMIT_ENABLED", true)?),
    };
    let mut limits = RateLimitSettings::default();
    if let Some(text) = src.get("RATE_LIMITS") {
        limits.apply(text).map_err(|expected| ConfigError { var: "RATE_LIMITS", value: text.into(), expected })?;
    }
    limits.per_hotkey =
        src.parse("HOTKEY_RATE_LIMIT_PER_MINUTE", limits.per_hotkey, "a whole number per minute (at least 1)")?.max(1);
    Ok((enabled, limits))
}

/// `MAX_CONCURRENT_REQUESTS` (in flight across the workers, and queued on one), time-aware
/// admission and hedging.
pub(super) fn scheduler(src: &Source) -> Result<SchedulerSettings, ConfigError> {
    let max: usize = src.parse("MAX_CONCURRENT_REQUESTS", 10, "a whole number of at least 1")?;
    checked("MAX_CONCURRENT_REQUESTS", max, max > 0, "a whole number of at least 1")?;
    Ok(SchedulerSettings {
        max_in_flight: max,
        max_queue_per_worker: max,
        admission: admission(src)?,
        hedge: hedge(src)?,
        ..SchedulerSettings::default()
    })
}

/// `TIME_AWARE_ADMISSION`, `ADMISSION_MIN_TOKENS`, `ADMISSION_MAX_WAIT_MS` (0: no cap) and
/// `ADMISSION_KEEP_SAMPLE_MINUTES`.
fn admission(src: &Source) -> Result<AdmissionSettings, ConfigError> {
    let enabled = src.boolean("TIME_AWARE_ADMISSION", true)?;
    let min_useful_tokens = src.parse("ADMISSION_MIN_TOKENS", 48, "a number of tokens")?;
    let default_wait = DEFAULT_MAX_WAIT.as_millis() as u64;
    let max_wait_ms: u64 = src.parse("ADMISSION_MAX_WAIT_MS", default_wait, "milliseconds (0 = no cap)")?;
    let default_minutes = DEFAULT_KEEP_SAMPLE_EVERY.as_secs() / 60;
    let minutes: u64 = src.parse("ADMISSION_KEEP_SAMPLE_MINUTES", default_minutes, "minutes (at least 1)")?;
    checked("ADMISSION_KEEP_SAMPLE_MINUTES", minutes, minutes > 0, "minutes (at least 1)")?;
    Ok(AdmissionSettings {
        enabled,
        min_useful_tokens,
        max_wait: (max_wait_ms > 0).then(|| Duration::from_millis(max_wait_ms)),
        keep_sample_every: Duration::from_secs(minutes * 60),
    })
}

/// `HEDGING`, `HEDGE_AFTER_FACTOR` (x the median recent time to first token) and `HEDGE_MIN_MS`.
fn hedge(src: &Source) -> Result<HedgeSettings, ConfigError> {
    let enabled = src.boolean("HEDGING", true)?;
    let factor: f64 = src.parse("HEDGE_AFTER_FACTOR", 3.0, "a number of at least 1")?;
    checked("HEDGE_AFTER_FACTOR", factor, factor >= 1.0 && factor.is_finite(), "a number of at least 1")?;
    let min_after = Duration::from_millis(src.parse("HEDGE_MIN_MS", 500, "milliseconds")?);
    Ok(HedgeSettings { enabled, factor, min_after })
}

/// The HTTP server's limits and what it serves: bodies, timeouts, connections, `/inference`,
/// `/health` and `/metrics` (`METRICS_HOST`, `METRICS_PORT`, `METRICS_ON_PUBLIC_PORT`), the API
/// docs, and the proxies whose `X-Forwarded-For` is believed.
pub(super) fn http(src: &Source) -> Result<HttpSettings, ConfigError> {
    let connections = "a number of connections (at least 1)";
    let metrics_host = src.string("METRICS_HOST", "127.0.0.1");
    let metrics_port = match src.get("METRICS_PORT") {
        Some(v) if v.eq_ignore_ascii_case("off") => None,
        _ => Some(src.parse("METRICS_PORT", DEFAULT_METRICS_PORT, "a TCP port, or off")?),
    };
    Ok(HttpSettings {
        max_body_bytes: src.parse("MAX_BODY_BYTES", 2 * 1024 * 1024, "a number of bytes")?,
        max_key_exchange_bytes: src.parse("MAX_KEY_EXCHANGE_BYTES", 8 * 1024, "a number of bytes")?.max(1024),
        body_read_timeout: src.secs("BODY_READ_TIMEOUT_SECONDS", 10)?.max(Duration::from_secs(1)),
        header_read_timeout: src.secs("HEADER_READ_TIMEOUT_SECONDS", 5)?.max(Duration::from_secs(1)),
        keep_alive: src.secs("KEEP_ALIVE_SECONDS", DEFAULT_KEEP_ALIVE_SECS)?,
        max_connections: src.parse("MAX_CONNECTIONS", 2048, connections)?.max(1),
        max_connections_per_address: src.parse("MAX_CONNECTIONS_PER_ADDRESS", 64, connections)?.max(1),
        inference_enabled: src.boolean("ENABLE_INFERENCE_ENDPOINT", false)?,
        ops_listen: metrics_port.map(|port| (metrics_host, port)),
        ops_on_public_port: src.boolean("METRICS_ON_PUBLIC_PORT", false)?,
        api_docs: src.boolean("ENABLE_API_DOCS", false)?,
        health_grace: src.secs("HEALTH_GRACE_SECONDS", 300)?,
        trusted_proxies: trusted_proxies(src)?,
    })
}

/// `TRUSTED_PROXIES`: comma-separated addresses. Empty (the default): `X-Forwarded-For` is never
/// read, since anyone can write it.
fn trusted_proxies(src: &Source) -> Result<Vec<std::net::IpAddr>, ConfigError> {
    let Some(text) = src.get("TRUSTED_PROXIES") else {
        return Ok(Vec::new());
    };
    let addresses = text.split(',').map(str::trim).filter(|t| !t.is_empty());
    addresses
        .map(|t| {
            t.parse().map_err(|_| ConfigError {
                var: "TRUSTED_PROXIES",
                value: text.to_string(),
                expected: "comma-separated IP addresses of your reverse proxies".into(),
            })
        })
        .collect()
}

/// The heartbeat's settings but its endpoint (`url` stays empty here: it is the endpoint that
/// answered at start, see `crate::registration::heartbeat_settings`). `AXON_EXTERNAL_PORT` defaults to `API_PORT`.
pub(super) fn chain(src: &Source, api_port: u16) -> Result<ChainSettings, ConfigError> {
    let netuid = src.parse("NETUID", 78, "a subnet number (0-65535)")?;
    let alpha: f64 = src.parse("MIN_VALIDATOR_STAKE", 0.0, "an amount of alpha (>= 0)")?;
    checked("MIN_VALIDATOR_STAKE", alpha, alpha >= 0.0 && alpha.is_finite(), "an amount of alpha (>= 0)")?;
    let axon = match src.get("AXON_EXTERNAL_IP") {
        None => None,
        Some(ip) => {
            let ip = ip.parse().map_err(|_| ConfigError {
                var: "AXON_EXTERNAL_IP",
                value: ip.into(),
                expected: "an IPv4 or IPv6 address".into(),
            })?;
            Some((ip, src.parse("AXON_EXTERNAL_PORT", api_port, "a TCP port (1-65535)")?))
        }
    };
    Ok(ChainSettings {
        url: String::new(),
        netuid,
        sync_every_blocks: src.parse("METAGRAPH_SYNC_BLOCKS", 10, "a number of blocks (at least 1)")?.max(1),
        poll_every: src.secs("CHAIN_POLL_SECONDS", 12)?.max(Duration::from_secs(1)),
        // In rao.
        min_validator_stake: (alpha * 1e9) as u64,
        axon,
        reconnect_initial: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(60),
    })
}
