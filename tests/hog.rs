//! One host cannot hold the door, against the real binary: 127.0.0.2 opens 3,000 connections
//! that trickle their headers or their bodies and reopen whenever dropped, while the honest
//! validator on 127.0.0.1 polls `/availability` and sends challenges.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use loosh_actors::protocol::signature::Hotkey;
use loosh_bench::hog::hog;
use loosh_miner::client::validator::{challenge_body, ValidatorClient};

/// The validator's `/availability` timeout (`availability_worker.py`).
const VALIDATOR_POLL_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_thousand_trickling_connections_from_one_host_leave_the_validator_served() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let miner = MinerProcess::start(
        &model,
        true,
        &[("VALIDATOR_HOTKEYS", validator.ss58()), ("RATE_LIMIT_ENABLED", "true"), ("MAX_MODEL_LEN", "4096")],
    );
    let mut honest = ValidatorClient::new(&miner.url, validator.clone());
    honest.handshake().await.unwrap();
    let target: SocketAddr = miner.url.strip_prefix("http://").unwrap().parse().unwrap();

    let attack =
        tokio::spawn(hog(target, IpAddr::from([127, 0, 0, 2]), 3000, Duration::from_secs(20), Duration::from_secs(1)));
    // The validator's side while the hog runs: a poll every 0.25 s and five challenges.
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    let body = challenge_body("Say hello.", 8, 0.7);
    let (mut latencies, mut answered, mut failures) = (Vec::new(), 0, Vec::new());
    let (mut polls_false, mut most_open) = (0, 0.0f64);
    while !attack.is_finished() {
        let t0 = Instant::now();
        match http.get(format!("{}/availability", miner.url)).header("validator-hotkey", validator.ss58()).send().await
        {
            Ok(r) if r.status() == 200 => {
                let v: serde_json::Value = r.json().await.unwrap();
                polls_false += usize::from(v["available"] != true);
            }
            Ok(r) => failures.push(format!("availability {}", r.status())),
            Err(e) => failures.push(format!("availability: {e}")),
        }
        latencies.push(t0.elapsed());
        most_open = most_open.max(miner.metric("loosh_connections_open").unwrap_or(0.0));
        if answered < 5 && latencies.len() % 4 == 0 {
            match honest.challenge_once(&body).await {
                Ok(_) => answered += 1,
                Err(e) => failures.push(format!("challenge: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = attack.await.unwrap();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    let refused = miner.metric("loosh_connections_refused_total{reason=\"address_cap\"}").unwrap_or(0.0);
    println!(
        "hog: {report:?}; most open at the miner {most_open}; honest availability p50 {:?} p99 {:?} max {:?} over {} polls ({polls_false} false), {answered}/5 challenges; refused at accept {refused}",
        p(0.5),
        p(0.99),
        latencies.last().unwrap(),
        latencies.len()
    );
    assert!(failures.is_empty(), "the validator was failed during the hog: {failures:?}");
    assert_eq!(answered, 5);
    assert_eq!(polls_false, 0);
    assert!(*latencies.last().unwrap() < VALIDATOR_POLL_TIMEOUT, "a poll took longer than the validator waits");
    // The hog's 64 (MAX_CONNECTIONS_PER_ADDRESS) plus the validator's own and the metrics reads.
    assert!(most_open <= 64.0 + 8.0, "the miner held {most_open} connections open at once");
    assert!(refused > 0.0, "nothing was refused at accept: the hog never reached the cap");
    assert!(
        report.longest_held < Duration::from_secs(15),
        "a trickling connection lived {:?}: the header and body deadlines did not drop it",
        report.longest_held
    );
}
