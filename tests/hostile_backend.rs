//! A hostile OpenAI-compatible backend against the real binary (issue 32): a `tool_calls` delta
//! with `index` 4,000,000,000, and content deltas without end. Each challenge that meets one gets
//! a 502; the node stays alive, under 512 MiB at its peak, and answers the next challenge.
//!
//! The backend is `loosh_bench::hostile_backend`, written by hand on a socket because it
//! must misbehave on purpose (hence in the benchmarks' crate, a dev-dependency of the tests).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use loosh_actors::protocol::signature::Hotkey;
use loosh_bench::hostile_backend::{self, Hostility};
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};

const MIB: u64 = 1024 * 1024;

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Kills the miner if its memory passes `limit` while `running` (a guard: without it, a node
/// that grows without bound would take the machine with it before the test could fail).
fn memory_guard(pid: u32, limit: u64, running: Arc<AtomicBool>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        while running.load(Ordering::Relaxed) {
            match status_bytes(pid, "VmRSS:") {
                Some(rss) if rss > limit => {
                    let _ = std::process::Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
                    return true;
                }
                Some(_) => std::thread::sleep(Duration::from_millis(5)),
                None => return false,
            }
        }
        false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_backend_costs_one_502_per_challenge_not_the_node() {
    let base_url = hostile_backend::start().await.unwrap();
    let workers = format!(
        r#"[{{"kind":"openai","name":"hostile","base_url":"{base_url}","model":"{}","n_parallel":2}}]"#,
        hostile_backend::MODEL
    );
    let miner = MinerProcess::start(&tiny_model(), true, &[("WORKERS", workers.as_str())]);
    let running = Arc::new(AtomicBool::new(true));
    let guard = memory_guard(miner.pid(), 2048 * MIB, running.clone());
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());

    for hostility in Hostility::ALL {
        let prompt = format!("Say hi. {}", hostility.trigger());
        match client.challenge(&challenge_body(&prompt, 16, 0.7)).await {
            Err(ClientError::Status { status: 502, body, .. }) => {
                assert!(body.contains("the backend misbehaved"), "{hostility:?}: {body}");
                // Issue 33: the backend's address and its misbehaviour are for the log, not the caller.
                assert!(!body.contains("127.0.0.1") && !body.contains("http"), "{hostility:?}: {body}")
            }
            other => panic!(
                "{hostility:?}: expected a 502, got {other:?} (peak memory {:?} MiB)",
                status_bytes(miner.pid(), "VmHWM:").map(|b| b / MIB)
            ),
        }
    }
    let (reply, _) =
        client.challenge(&challenge_body("Say hi", 16, 0.7)).await.expect("the node answers the next challenge");
    assert_eq!(reply.response_text, hostile_backend::HONEST_TEXT);

    running.store(false, Ordering::Relaxed);
    assert!(!guard.join().unwrap(), "the guard had to kill the node");
    let peak = status_bytes(miner.pid(), "VmHWM:").expect("the node is alive");
    assert!(peak < 512 * MIB, "the node's peak memory was {} MiB", peak / MIB);
}
