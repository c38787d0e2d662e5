//! `loosh-bench attack`'s attacks on a validator's share (issue 29): what a competing miner can do with
//! key exchanges the validator signed, measured by what the honest validator gets meanwhile.
//!
//! The miner runs as an operator runs it: the allow list is the honest validator, rate limits on.
//! The honest validator sends challenges from 127.0.0.1, one after another, alone and then during
//! each attack in the same run; the attacker works from 127.0.0.2 and above (loopback aliases:
//! other hosts, as the miner sees them).
//! - replay-many: one of the validator's exchanges, captured, replayed from 16 addresses.
//! - relay: an exchange the validator signed for another miner, its wrapped key swapped for one
//!   the relayer chose; the relayer then keeps deadline-length challenges in flight as the
//!   validator. Three times: with no address reported for the validator, from one relayer address
//!   (the two addresses split the validator's share) and from eight (the limit of what a split can
//!   do: only a report tells the validator's address from a relayer's), then with its own reported
//!   (the Challenge API's `ip`, its axon), where the relayer gets only the small shared share.
//! - hog (issue 30): 3,000 connections from one address trickling headers or bodies, reopened
//!   when dropped ([`crate::hog`]); the validator's `/availability` polls and challenges meanwhile.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::front_door::{Source, ValidatorAuth};
use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::messages::unix_time_f64;
use loosh_actors::protocol::rsa_keys::wrap_fernet_key;
use loosh_actors::settings::Hotkey;

use crate::load::stats;
use crate::miner::{bench_config_with, start_with_auth, stop};
use loosh_miner::client::validator::{challenge_body, key_exchange_body, ValidatorClient};

pub struct SharePlan {
    pub model: PathBuf,
    pub threads: i32,
    /// Challenges the honest validator sends per measurement.
    pub honest: usize,
    /// Replays of the captured exchange from each of 16 addresses.
    pub replays_per_address: usize,
    /// Challenges the relayer tries to keep in flight.
    pub relay_in_flight: usize,
    /// Connections the hog keeps trying to hold from one address.
    pub hog_connections: usize,
    /// Which of the three to run.
    pub replay_many: bool,
    pub relay: bool,
    pub hog: bool,
}

/// What the honest validator got: answered of sent, and the answered ones' p50/p99.
struct Honest {
    answered: usize,
    sent: usize,
    p50_ms: f64,
    p99_ms: f64,
}

fn loopback(n: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, n]))
}

async fn honest_challenges(client: &ValidatorClient, n: usize) -> Honest {
    let body = challenge_body("Say hello.", 8, 0.7);
    let (mut lat, began) = (Vec::new(), Instant::now());
    for _ in 0..n {
        let t = Instant::now();
        if client.challenge_once(&body).await.is_ok() {
            lat.push(t.elapsed());
        }
    }
    let answered = lat.len();
    let (p50_ms, p99_ms) = if lat.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        let s = stats(lat, began.elapsed());
        (s.p50_ms, s.p99_ms)
    };
    Honest { answered, sent: n, p50_ms, p99_ms }
}

fn line(name: &str, h: &Honest, alone: &Honest, what: String) {
    println!(
        "{name:<14} honest {}/{} answered, p50 {:7.1} ms p99 {:7.1} ms (alone {}/{}, p50 {:.1} ms p99 {:.1} ms); {what}",
        h.answered, h.sent, h.p50_ms, h.p99_ms, alone.answered, alone.sent, alone.p50_ms, alone.p99_ms
    );
}

pub async fn shares(plan: SharePlan) -> anyhow::Result<()> {
    let validator = Hotkey::ephemeral();
    let cfg = bench_config_with(
        &plan.model,
        plan.threads,
        10,
        &[
            ("RATE_LIMIT_ENABLED", "true"),
            ("VALIDATOR_HOTKEYS", validator.ss58()),
            ("CHALLENGE_DEADLINE_MS", "8000"),
            ("MAX_MODEL_LEN", "16384"),
        ],
    )?;
    let auth = Arc::new(ValidatorAuth::new(true, [validator.ss58().to_string()]));
    let node = start_with_auth(&cfg, auth.clone()).await?;
    let door = &node.door;
    let url = format!("http://{}", node.addr);
    println!(
        "share attacks: allow list = the honest validator (127.0.0.1), rate limits on, MAX_CONCURRENT_REQUESTS 10, {} in flight per validator share; attacker on 127.0.0.2+",
        cfg.door.max_in_flight_per_validator
    );
    let mut honest = ValidatorClient::new(&url, validator.clone());
    let pem = honest.fetch_public_key().await?;
    let (key_text, key) = FernetKey::generate();
    let wrapped = wrap_fernet_key(&pem, &key_text)?;
    let captured =
        key_exchange_body(&validator, &wrapped, "honest", &uuid::Uuid::new_v4().to_string(), unix_time_f64());
    anyhow::ensure!(honest.post_exchange(captured.clone()).await?.0 == 200, "the honest exchange was refused");
    honest.use_key("honest", key);
    let alone = honest_challenges(&honest, plan.honest).await;
    line("alone:", &alone, &alone, String::new());

    if plan.replay_many {
        // replay-many: the captured exchange from 16 addresses, all at once, while the validator works.
        let rsa_before = door.metrics().rsa_operations.get();
        let mut replayers = Vec::new();
        for n in 2..18 {
            let (url, captured, per) = (url.clone(), captured.clone(), plan.replays_per_address);
            replayers.push(tokio::spawn(async move {
                let client = ValidatorClient::from_address(&url, Hotkey::ephemeral(), loopback(n));
                let mut statuses = Vec::new();
                for _ in 0..per {
                    statuses.push(client.post_exchange(captured.clone()).await.map(|(s, _)| s).unwrap_or(0));
                }
                statuses
            }));
        }
        let during = honest_challenges(&honest, plan.honest).await;
        let mut counts = std::collections::BTreeMap::new();
        for r in replayers {
            for s in r.await? {
                *counts.entry(s).or_insert(0usize) += 1;
            }
        }
        let statuses = counts.iter().map(|(s, n)| format!("{s}×{n}")).collect::<Vec<_>>().join(" ");
        line(
            "replay-many:",
            &during,
            &alone,
            format!(
                "{} replays from 16 addresses: statuses {statuses}, RSA ops {}",
                16 * plan.replays_per_address,
                door.metrics().rsa_operations.get() - rsa_before
            ),
        );
    }
    // relay: the validator's exchange for another miner, with the relayer's own key; first with
    // no address reported for the validator (its addresses split its share), from one address and
    // then from eight, then with 127.0.0.1 reported, as the Challenge API's `ip` or its axon
    // report it.
    let phases = [(false, 1u8, "relay:"), (false, 8, "relay ×8:"), (true, 1, "relay (home):")];
    for (n, (reported, addresses, name)) in phases.into_iter().filter(|_| plan.relay).enumerate() {
        if reported {
            let home = [(validator.ss58().to_string(), [IpAddr::from([127, 0, 0, 1])].into())].into();
            auth.set_reported_addresses(Source::ChallengeApi, home);
        }
        let mut relayers = Vec::new();
        let mut statuses = Vec::new();
        for a in 0..addresses {
            // Each relayer address makes its own key from another exchange the validator signed.
            let uuid = format!("relayed-{n}-{a}");
            let (theirs, _) = FernetKey::generate();
            let their_wrapped = wrap_fernet_key(&pem, &theirs)?;
            let nonce = uuid::Uuid::new_v4().to_string();
            let for_them = key_exchange_body(&validator, &their_wrapped, "theirs", &nonce, unix_time_f64());
            let (chosen_text, chosen) = FernetKey::generate();
            let relayed = for_them
                .replace(&their_wrapped, &wrap_fernet_key(&pem, &chosen_text)?)
                .replace("\"theirs\"", &format!("\"{uuid}\""));
            let mut relayer = ValidatorClient::from_address(&url, validator.clone(), loopback(2 + a));
            statuses.push(relayer.post_exchange(relayed).await?.0);
            relayer.use_key(&uuid, chosen);
            relayers.push(relayer);
        }
        let stop_relay = Arc::new(AtomicBool::new(false));
        let (admitted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut holders = Vec::new();
        for i in 0..plan.relay_in_flight.max(relayers.len()) {
            let relayer = relayers[i % relayers.len()].clone();
            let (stop_relay, admitted, refused) = (stop_relay.clone(), admitted.clone(), refused.clone());
            holders.push(tokio::spawn(async move {
                let long = challenge_body("Tell me everything you know.", 12_000, 0.7);
                while !stop_relay.load(Ordering::Relaxed) {
                    match relayer.challenge_once(&long).await {
                        Ok(_) => admitted.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        // Let the relayer take whatever it can before the validator starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let in_flight_by_relayer = door.status_now().in_flight;
        let during = honest_challenges(&honest, plan.honest).await;
        stop_relay.store(true, Ordering::Relaxed);
        for h in holders {
            h.abort();
        }
        // The relayer's challenges run on to their deadline after its client gives up: the next
        // phase starts from an idle miner.
        let drained = Instant::now() + Duration::from_secs(30);
        while door.status_now().in_flight > 0 && Instant::now() < drained {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        statuses.dedup();
        line(
            name,
            &during,
            &alone,
            format!(
                "relayed exchanges {statuses:?} from {addresses} address(es); the relayer held {in_flight_by_relayer} challenges in flight (tried {}), {} of its challenges answered, {} refused",
                plan.relay_in_flight.max(relayers.len()),
                admitted.load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed)
            ),
        );
    }
    if plan.hog {
        // hog: one address holding every connection it can, while the validator polls and works.
        let polls_alone =
            availability_polls(&url, &validator, Duration::from_secs(5), None::<&tokio::task::JoinHandle<()>>).await;
        let target: std::net::SocketAddr = node.addr;
        let attack = tokio::spawn(crate::hog::hog(
            target,
            IpAddr::from([127, 0, 0, 2]),
            plan.hog_connections,
            Duration::from_secs(20),
            Duration::from_secs(1),
        ));
        let polls = availability_polls(&url, &validator, Duration::from_secs(20), Some(&attack)).await;
        let during = honest_challenges(&honest, plan.honest).await;
        let report = attack.await?;
        line(
            "hog:",
            &during,
            &alone,
            format!(
                "{} connections from 127.0.0.2: /availability p50 {:.1} ms p99 {:.1} ms over {} polls (alone p50 {:.1} ms p99 {:.1} ms), {} not true; the hog opened {}, was dropped {} times, its longest connection {:.1} s",
                plan.hog_connections,
                polls.p50_ms,
                polls.p99_ms,
                polls.polls,
                polls_alone.p50_ms,
                polls_alone.p99_ms,
                polls.not_true,
                report.opened,
                report.dropped,
                report.longest_held.as_secs_f64()
            ),
        );
    }
    stop(node).await;
    Ok(())
}

/// The validator's selection polls: how many, how many not `true`, p50/p99.
struct Polls {
    polls: usize,
    not_true: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Polls `/availability` as the validator does, every 0.25 s, for `at_least` and while `attack`
/// runs.
async fn availability_polls<T>(
    url: &str,
    validator: &Hotkey,
    at_least: Duration,
    attack: Option<&tokio::task::JoinHandle<T>>,
) -> Polls {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build().expect("a client builds");
    let (began, mut lat, mut not_true) = (Instant::now(), Vec::new(), 0);
    while began.elapsed() < at_least || attack.is_some_and(|a| !a.is_finished()) {
        let t = Instant::now();
        let ok = match http.get(format!("{url}/availability")).header("validator-hotkey", validator.ss58()).send().await
        {
            Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|v| v["available"] == true),
            Err(_) => false,
        };
        not_true += usize::from(!ok);
        lat.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let polls = lat.len();
    let s = stats(lat, began.elapsed());
    Polls { polls, not_true, p50_ms: s.p50_ms, p99_ms: s.p99_ms }
}
