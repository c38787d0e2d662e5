//! `loosh-miner status`: one screen an operator reads to see why a validator sends no work —
//! validators (stake, last key exchange and challenge, ok/err, p50), workers (where, phase,
//! tokens/s, restarts) and the chain (block, uid, incentive, axon) — from the running miner's
//! `/metrics` and `/health` on the operator's address.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Duration;

use crate::client::ops::{self, OpsError};
use crate::config::Config;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition format (comments skipped; label values unescaped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (head, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((name, rest)) => (name.to_string(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String =
            chars.by_ref().take_while(|&c| c != '=').collect::<String>().trim_start_matches(',').trim().to_string();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
    labels
}

/// The median from a histogram's cumulative buckets (linear within the bucket, as PromQL's
/// `histogram_quantile`); `None` with no observations.
pub fn p50(buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.iter().find(|(le, _)| le.is_infinite()).map(|b| b.1)?;
    if total <= 0.0 {
        return None;
    }
    let rank = total / 2.0;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let share = if count > below { (rank - below) / (count - below) } else { 0.0 };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    None
}

fn ago(now: f64, at: Option<f64>) -> String {
    match at {
        None => "never".into(),
        Some(t) => {
            let s = (now - t).max(0.0) as u64;
            match s {
                0..=119 => format!("{s}s ago"),
                120..=7199 => format!("{}m ago", s / 60),
                _ => format!("{}h ago", s / 3600),
            }
        }
    }
}

/// The table, from the two documents (kept apart from the fetching so tests can feed it).
pub fn render(metrics: &str, health: &serde_json::Value, now: f64) -> String {
    let samples = parse_metrics(metrics);
    let one = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    let by = |name: &str, label: &str| -> BTreeMap<String, f64> {
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| Some((s.labels.get(label)?.clone(), s.value)))
            .collect()
    };
    let stake = by("loosh_validator_stake_alpha", "validator");
    let key_at = by("loosh_validator_last_key_exchange_timestamp_seconds", "validator");
    let challenge_at = by("loosh_validator_last_challenge_timestamp_seconds", "validator");
    let mut ok: BTreeMap<String, f64> = BTreeMap::new();
    let mut err: BTreeMap<String, f64> = BTreeMap::new();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in &samples {
        let Some(v) = s.labels.get("validator") else { continue };
        match s.name.as_str() {
            "loosh_validator_challenges_total" if s.labels.get("outcome").is_some_and(|o| o == "ok") => {
                *ok.entry(v.clone()).or_default() += s.value
            }
            "loosh_validator_challenges_total" => *err.entry(v.clone()).or_default() += s.value,
            "loosh_validator_challenge_seconds_bucket" => {
                let le =
                    s.labels.get("le").and_then(|l| if l == "+Inf" { Some(f64::INFINITY) } else { l.parse().ok() });
                if let Some(le) = le {
                    buckets.entry(v.clone()).or_default().push((le, s.value));
                }
            }
            _ => {}
        }
    }
    let validators: BTreeSet<&String> =
        stake.keys().chain(key_at.keys()).chain(challenge_at.keys()).chain(ok.keys()).chain(err.keys()).collect();

    let mut out = String::new();
    let _ = writeln!(out, "validators ({} seen or permitted)", validators.len());
    let _ = writeln!(
        out,
        "  {:<48}  {:>10}  {:>12}  {:>14}  {:>6}  {:>5}  {:>7}",
        "HOTKEY", "STAKE(α)", "KEY EXCHANGE", "LAST CHALLENGE", "OK", "ERR", "P50"
    );
    for v in &validators {
        let median = buckets.get(*v).and_then(|b| {
            let mut b = b.clone();
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            p50(&b)
        });
        let _ = writeln!(
            out,
            "  {:<48}  {:>10}  {:>12}  {:>14}  {:>6}  {:>5}  {:>7}",
            v,
            stake.get(*v).map_or("-".into(), |s| format!("{s:.2}")),
            ago(now, key_at.get(*v).copied()),
            ago(now, challenge_at.get(*v).copied()),
            ok.get(*v).copied().unwrap_or(0.0),
            err.get(*v).copied().unwrap_or(0.0),
            median.map_or("-".into(), |m| format!("{m:.2}s")),
        );
    }

    let places: BTreeMap<String, String> = samples
        .iter()
        .filter(|s| s.name == "loosh_worker_info")
        .filter_map(|s| Some((s.labels.get("worker")?.clone(), s.labels.get("device")?.clone())))
        .collect();
    let tps = by("loosh_engine_tokens_per_second", "worker");
    let _ = writeln!(out, "workers");
    let _ =
        writeln!(out, "  {:<12}  {:<28}  {:<24}  {:>9}  {:>8}", "WORKER", "DEVICE", "PHASE", "TOKENS/S", "RESTARTS");
    for w in health["workers"].as_array().into_iter().flatten() {
        let name = w["name"].as_str().unwrap_or("?");
        let phase = w["phase"].as_str().unwrap_or("?");
        let phase: String = phase.chars().take(24).collect();
        let _ = writeln!(
            out,
            "  {:<12}  {:<28}  {:<24}  {:>9}  {:>8}",
            name,
            places.get(name).map_or("-", String::as_str),
            phase,
            tps.get(name).map_or("-".into(), |t| format!("{t:.1}")),
            w["restarts"].as_u64().unwrap_or(0),
        );
    }

    let _ = writeln!(out, "chain");
    let axon = samples
        .iter()
        .find(|s| s.name == "loosh_axon" && s.value == 1.0)
        .and_then(|s| s.labels.get("address").cloned())
        .unwrap_or_else(|| "not read (set AXON_EXTERNAL_IP)".into());
    if one("loosh_chain_connected") == Some(1.0) || one("loosh_chain_block").is_some_and(|b| b > 0.0) {
        let uid = one("loosh_uid").filter(|u| *u >= 0.0).map_or("not registered".into(), |u| format!("{u}"));
        let _ = writeln!(
            out,
            "  block {}  uid {}  incentive {:.4}  axon {}{}",
            one("loosh_chain_block").unwrap_or(0.0),
            uid,
            one("loosh_incentive_ratio").unwrap_or(0.0),
            axon,
            if one("loosh_chain_connected") == Some(1.0) { "" } else { "  (DISCONNECTED: reconnecting)" }
        );
    } else {
        let _ = writeln!(out, "  not connected (a --dev node, or the chain unreachable since start)");
    }
    out
}

/// Fetches and renders; the error names the address and what to check.
pub fn run(cfg: &Config) -> Result<String, OpsError> {
    let addr = ops::ops_address(cfg)?;
    let timeout = Duration::from_secs(5);
    let metrics = ops::get(&addr, "/metrics", timeout)?;
    let health = ops::get(&addr, "/health", timeout)?;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap_or_default();
    Ok(render(&metrics, &health, loosh_actors::protocol::messages::unix_time_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_parses_with_labels_and_escapes() {
        let s = parse_metrics("# HELP x\nx 1\ny{a=\"1\",b=\"q\\\"x\"} 2.5\nz{le=\"+Inf\"} 3\n");
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].labels["b"], "q\"x");
        assert_eq!(s[1].value, 2.5);
        assert_eq!(s[2].labels["le"], "+Inf");
    }

    #[test]
    fn the_median_interpolates_in_its_bucket() {
        assert_eq!(p50(&[(1.0, 0.0), (2.0, 4.0), (f64::INFINITY, 4.0)]), Some(1.5));
        assert_eq!(p50(&[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
