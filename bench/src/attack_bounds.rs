//! `loosh-bench attack`'s attacks of issue 32: inputs sized to slow or kill the node.
//!
//! - `stop-list`: an honest validator's tokens/s alone, beside a plain load on the same worker (what
//!   sharing it costs), and while an attacker on the same worker sends challenges with 300,000
//!   one-character stop strings (what a 2 MiB body holds) and, beside them, challenges with the
//!   largest stop list accepted (16 strings of 256 bytes). Unbounded, the stop strings are scanned
//!   after every token on the engine thread that the honest challenge shares.
//! - `hostile-backend`: a node whose one worker is an OpenAI-compatible backend that misbehaves
//!   on purpose (`hostile_backend.rs`): the node's peak resident memory (VmHWM, reset between
//!   variants) for each misbehaviour, the status the challenge got, and whether the next honest
//!   challenge is answered. A guard ends the bench if the node passes 2 GiB, which unbounded it did
//!   within seconds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::settings::Hotkey;
use serde_json::json;

use crate::hostile_backend::{self, Hostility};
use crate::miner::{bench_config_with, start, stop};
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};

/// Tokens/s of one validator's challenges, one after another.
struct Pace {
    tokens: u64,
    busy: Duration,
    rounds: usize,
    errors: usize,
}

impl Pace {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// The honest validator's prompt and length: long enough that tokens/s, not the round trip, is
/// what is measured.
const HONEST_PROMPT: &str = "Write a short story about a lighthouse keeper who finds a message in a bottle.";

async fn honest_pace(url: &str, rounds: usize, max_tokens: u32) -> anyhow::Result<Pace> {
    let mut client = ValidatorClient::new(url, Hotkey::ephemeral());
    let body = challenge_body(HONEST_PROMPT, max_tokens, 0.7);
    let mut pace = Pace { tokens: 0, busy: Duration::ZERO, rounds: 0, errors: 0 };
    for _ in 0..rounds {
        let t = Instant::now();
        match client.challenge(&body).await {
            Ok((reply, _)) => {
                pace.tokens += u64::from(reply.usage.completion_tokens);
                pace.busy += t.elapsed();
                pace.rounds += 1;
            }
            Err(_) => pace.errors += 1,
        }
    }
    anyhow::ensure!(pace.rounds > 0, "no honest challenge was answered");
    Ok(pace)
}

/// Challenges of `challenge`, one after another (at most one per `every`), until `halt`; the
/// statuses they got.
async fn attacker(
    url: String,
    challenge: serde_json::Value,
    every: Duration,
    halt: Arc<AtomicBool>,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
    let mut statuses = BTreeMap::new();
    while !halt.load(Ordering::Relaxed) {
        let next = tokio::time::Instant::now() + every;
        let status = match client.challenge(&challenge).await {
            Ok(_) => "200".to_string(),
            Err(ClientError::Status { status, .. }) => status.to_string(),
            Err(e) => format!("{e}"),
        };
        *statuses.entry(status).or_insert(0) += 1;
        tokio::time::sleep_until(next).await;
    }
    Ok(statuses)
}

/// The honest validator's pace while `challenges` are sent beside it (each with its pace); the
/// statuses each stream of challenges got.
async fn beside(
    url: &str,
    rounds: usize,
    max_tokens: u32,
    challenges: Vec<(serde_json::Value, Duration)>,
) -> anyhow::Result<(Pace, Vec<BTreeMap<String, usize>>)> {
    let halt = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = challenges
        .into_iter()
        .map(|(c, every)| tokio::spawn(attacker(url.to_string(), c, every, halt.clone())))
        .collect();
    let pace = honest_pace(url, rounds, max_tokens).await;
    halt.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await??);
    }
    Ok((pace?, statuses))
}

pub async fn stop_list(model: &Path, threads: i32, rounds: usize, max_tokens: u32) -> anyhow::Result<()> {
    // One worker generating three challenges at once: the honest validator's and the attacker's
    // two share its engine thread.
    let cfg = bench_config_with(model, threads, 16, &[("LLAMA_PARALLEL", "3")])?;
    let node = start(&cfg).await?;
    let url = format!("http://{}", node.addr);
    let alone = honest_pace(&url, rounds, max_tokens).await?;

    // The same load without stop strings: what sharing the worker costs the honest validator.
    let plain = challenge_body(HONEST_PROMPT, max_tokens, 0.7);
    let (shared, _) = beside(&url, rounds, max_tokens, vec![(plain, Duration::ZERO)]).await?;

    // DEL never comes out of a model, so no stop string ends a generation early, and it is one
    // byte of JSON: 300,000 of them fit a 2 MiB body. Those challenges are sent four a second at
    // most, as an attacker under the rate limits (off in the bench) could; the largest list
    // accepted is sent one challenge after another, as the plain load was.
    let mut huge = challenge_body(HONEST_PROMPT, max_tokens, 0.7);
    huge["stop"] = json!(vec!["\u{7f}"; 300_000]);
    let mut most = challenge_body(HONEST_PROMPT, max_tokens, 0.7);
    most["stop"] = json!(vec!["\u{7f}".repeat(256); 16]);
    let (during, statuses) =
        beside(&url, rounds, max_tokens, vec![(huge, Duration::from_millis(250)), (most, Duration::ZERO)]).await?;
    let percent = |p: &Pace| 100.0 * p.tokens_per_s() / alone.tokens_per_s().max(1e-9);
    println!(
        "stop list:       honest {:6.1} tokens/s alone, {:6.1} beside a plain load ({:.0} %), {:6.1} during the attack ({:.0} %), {} rounds of {max_tokens} tokens, errors {}; 300,000 stop strings: {}; 16 x 256 bytes: {}",
        alone.tokens_per_s(),
        shared.tokens_per_s(),
        percent(&shared),
        during.tokens_per_s(),
        percent(&during),
        during.rounds,
        during.errors,
        show(&statuses[0]),
        show(&statuses[1]),
    );
    stop(node).await;
    Ok(())
}

/// A `kB` field of this process's /proc status, in MiB.
fn own_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets this process's peak resident memory (VmHWM) to its current one (Linux 4.0+).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Ends the bench if the node (this process) passes `limit_mib`: an unbounded node grows until the
/// kernel ends it, and the machine with it.
fn memory_guard(limit_mib: f64) {
    std::thread::spawn(move || loop {
        if own_status_mib("VmRSS:").is_some_and(|rss| rss > limit_mib) {
            eprintln!("hostile backend: the node passed {limit_mib:.0} MiB; stopping the bench");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    });
}

pub async fn hostile_backend(model: &Path, threads: i32) -> anyhow::Result<()> {
    let base_url = hostile_backend::start().await?;
    let workers = format!(
        r#"[{{"kind":"openai","name":"hostile","base_url":"{base_url}","model":"{}","n_parallel":2}}]"#,
        hostile_backend::MODEL
    );
    let cfg = bench_config_with(model, threads, 16, &[("WORKERS", workers.as_str())])?;
    let node = start(&cfg).await?;
    let url = format!("http://{}", node.addr);
    memory_guard(2048.0);
    let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
    let honest = challenge_body("Say hi", 64, 0.7);
    client.challenge(&honest).await?;
    let resets = reset_peak();
    let baseline = own_status_mib("VmHWM:").unwrap_or(0.0);
    println!(
        "hostile backend: the node (this process) peaks at {baseline:.0} MiB after an honest challenge{}",
        if resets { "" } else { " (VmHWM cannot be reset here: peaks accumulate)" }
    );
    for hostility in Hostility::ALL {
        reset_peak();
        let prompt = format!("Say hi. {}", hostility.trigger());
        let t = Instant::now();
        let status = match client.challenge(&challenge_body(&prompt, 64, 0.7)).await {
            Ok(_) => "200".to_string(),
            Err(ClientError::Status { status, .. }) => status.to_string(),
            Err(e) => e.to_string(),
        };
        let took = t.elapsed();
        let peak = own_status_mib("VmHWM:").unwrap_or(0.0);
        let next = client.challenge(&honest).await.map_or_else(|e| format!("no ({e})"), |_| "yes".to_string());
        println!(
            "hostile backend: {:<22} status {status} in {:6.1} ms, peak RSS {peak:6.0} MiB; next challenge answered: {next}",
            hostility.name(),
            took.as_secs_f64() * 1e3
        );
    }
    stop(node).await;
    Ok(())
}

/// Response counts by status, as one line (`200×9 503×1`).
pub(super) fn show(counts: &BTreeMap<String, usize>) -> String {
    counts.iter().map(|(s, n)| format!("{s}×{n}")).collect::<Vec<_>>().join(" ")
}
