//! `loosh-bench attack`: the attacks of issue 9 against a local miner, each measured by
//! what an honest validator sees meanwhile.
//!
//! An honest validator (its own hotkey, a fresh key exchange then one challenge of one token, one
//! after another) is timed alone, then during each attack in the same run:
//! - replay flood: one validator's signed key exchange, captured, sent again with random
//!   ciphertexts (the signature does not cover them). The nonce is spent before RSA, so the
//!   exchange should cost one RSA operation however often it is replayed.
//! - stalled bodies: connections announcing a 2 MiB challenge body and sending a byte every two
//!   seconds; the body read deadline should drop every one.
//! - malformed flood: mutated key exchanges, tokens and JSON on every endpoint, with bad headers;
//!   none should get a 5xx other than a busy 503.
//! - stop list and hostile backend: issue 32's attacks, in `attack_bounds.rs`.
//!
//! `--attacks` picks which run (all by default). Rate limits are off, as in the other benches: the attacks come from one address, and limits
//! would hide what the rest of the hardening does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::front_door::FrontDoor;
use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::messages::unix_time_f64;
use loosh_actors::protocol::rsa_keys::wrap_fernet_key;
use loosh_actors::settings::Hotkey;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::attack_bounds::show;
use crate::load::stats;
use crate::miner::{bench_config, start, stop};
use loosh_miner::client::validator::{challenge_body, key_exchange_body, ValidatorClient};

/// One attack of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttackKind {
    Replay,
    Stalled,
    Malformed,
    StopList,
    HostileBackend,
    ReplayMany,
    Relay,
    Hog,
}

/// What to throw at the miner, and how hard.
pub struct AttackPlan {
    /// The attacks to run, in the bench's order.
    pub attacks: Vec<AttackKind>,
    /// Honest challenges per measurement of the stop-list attack, and their tokens.
    pub stop_rounds: usize,
    pub stop_tokens: u32,
    pub model: PathBuf,
    pub threads: i32,
    /// Honest handshake + challenge rounds per measurement (alone, and during each attack).
    pub honest: usize,
    /// Replays of the captured key exchange.
    pub replays: usize,
    /// Connections with a stalled body.
    pub stalled: usize,
    /// How long a stalled connection may live before it counts as not dropped.
    pub stall_window: Duration,
    /// Malformed or mutated requests.
    pub malformed: usize,
    /// Attack requests in flight at once (replay and malformed floods).
    pub concurrency: usize,
    /// Replays of one captured exchange from each of 16 addresses (replay-many).
    pub replays_per_address: usize,
    /// Challenges a relayer tries to keep in flight (relay).
    pub relay_in_flight: usize,
    /// Connections the hog keeps trying to hold from one address (hog).
    pub hog_connections: usize,
}

/// Latencies of honest rounds and how many failed.
struct Honest {
    rounds: usize,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

pub async fn attack(plan: AttackPlan) -> anyhow::Result<()> {
    let protocol = [AttackKind::Replay, AttackKind::Stalled, AttackKind::Malformed];
    if protocol.iter().any(|a| plan.attacks.contains(a)) {
        protocol_attacks(&plan).await?;
    }
    if plan.attacks.contains(&AttackKind::StopList) {
        crate::attack_bounds::stop_list(&plan.model, plan.threads, plan.stop_rounds, plan.stop_tokens).await?;
    }
    if plan.attacks.contains(&AttackKind::HostileBackend) {
        crate::attack_bounds::hostile_backend(&plan.model, plan.threads).await?;
    }
    let shares = [AttackKind::ReplayMany, AttackKind::Relay, AttackKind::Hog];
    if shares.iter().any(|a| plan.attacks.contains(a)) {
        crate::attack_shares::shares(crate::attack_shares::SharePlan {
            model: plan.model.clone(),
            threads: plan.threads,
            honest: plan.honest,
            replays_per_address: plan.replays_per_address,
            relay_in_flight: plan.relay_in_flight,
            hog_connections: plan.hog_connections,
            replay_many: plan.attacks.contains(&AttackKind::ReplayMany),
            relay: plan.attacks.contains(&AttackKind::Relay),
            hog: plan.attacks.contains(&AttackKind::Hog),
        })
        .await?;
    }
    Ok(())
}

/// Issue 9's attacks (those of them in the plan), on one node.
async fn protocol_attacks(plan: &AttackPlan) -> anyhow::Result<()> {
    let cfg = bench_config(&plan.model, plan.threads, 16)?;
    let node = start(&cfg).await?;
    let door = &node.door;
    let addr = node.addr;
    let url = format!("http://{addr}");
    println!(
        "attack bench: honest validator = key exchange + one-token challenge, one after another (at least {} rounds, and for as long as each attack lasts); model {}",
        plan.honest,
        plan.model.display()
    );
    let alone = honest_rounds::<()>(&url, plan.honest, None).await?;
    println!(
        "alone:           honest p50 {:7.1} ms p99 {:7.1} ms, errors {}",
        alone.p50_ms, alone.p99_ms, alone.errors
    );

    // (a) Replay flood.
    if plan.attacks.contains(&AttackKind::Replay) {
        replay_attack(door, &url, plan, &alone).await?;
    }
    // (b) Stalled bodies.
    if plan.attacks.contains(&AttackKind::Stalled) {
        stalled_attack(addr, &url, plan, &alone).await?;
    }
    // (c) Malformed flood.
    if plan.attacks.contains(&AttackKind::Malformed) {
        malformed_attack(addr, &url, plan, &alone).await?;
    }
    stop(node).await;
    Ok(())
}

async fn replay_attack(door: &FrontDoor, url: &str, plan: &AttackPlan, alone: &Honest) -> anyhow::Result<()> {
    let url = url.to_string();
    let rsa_before = door.metrics().rsa_operations.get();
    let replay = tokio::spawn(replay_flood(url.clone(), plan.replays, plan.concurrency));
    let honest = honest_rounds(&url, plan.honest, Some(&replay)).await?;
    let statuses = replay.await??;
    // Each honest round's key exchange is one RSA operation of its own.
    let rsa_for_flood =
        (door.metrics().rsa_operations.get() - rsa_before).saturating_sub((honest.rounds + honest.errors) as u64);
    println!(
        "replay flood:    honest p50 {:7.1} ms p99 {:7.1} ms (alone p99 {:.1} ms), {} rounds, errors {}; {} replays of one signed exchange: RSA ops {rsa_for_flood}, statuses {}",
        honest.p50_ms, honest.p99_ms, alone.p99_ms, honest.rounds, honest.errors, plan.replays, show(&statuses)
    );
    Ok(())
}

async fn stalled_attack(addr: SocketAddr, url: &str, plan: &AttackPlan, alone: &Honest) -> anyhow::Result<()> {
    let stall = tokio::spawn(stalled_bodies(addr, plan.stalled, plan.stall_window));
    let honest = honest_rounds(url, plan.honest, Some(&stall)).await?;
    let (dropped, slowest, refused) = stall.await??;
    println!(
        "stalled bodies:  honest p50 {:7.1} ms p99 {:7.1} ms (alone p99 {:.1} ms), {} rounds, errors {}; {} connections announcing 2 MiB, a byte per 2 s: {dropped} dropped within {} s (slowest after {:.1} s, {refused} refused at connect)",
        honest.p50_ms, honest.p99_ms, alone.p99_ms, honest.rounds, honest.errors, plan.stalled, plan.stall_window.as_secs(), slowest.as_secs_f64()
    );
    Ok(())
}

async fn malformed_attack(addr: SocketAddr, url: &str, plan: &AttackPlan, alone: &Honest) -> anyhow::Result<()> {
    let url = url.to_string();
    let flood = tokio::spawn(malformed_flood(addr, plan.malformed, plan.concurrency));
    let honest = honest_rounds(&url, plan.honest, Some(&flood)).await?;
    let statuses = flood.await??;
    let server_errors: usize =
        statuses.iter().filter(|(s, _)| s.starts_with('5') && s.as_str() != "503").map(|(_, n)| n).sum();
    let alive = ValidatorClient::new(&url, Hotkey::ephemeral()).availability().await.is_ok();
    println!(
        "malformed flood: honest p50 {:7.1} ms p99 {:7.1} ms (alone p99 {:.1} ms), {} rounds, errors {}; {} requests: 5xx (not 503) {server_errors}, miner answering after: {alive}, statuses {}",
        honest.p50_ms, honest.p99_ms, alone.p99_ms, honest.rounds, honest.errors, plan.malformed, show(&statuses)
    );
    Ok(())
}

/// Honest rounds one after another (a fresh key exchange, then a one-token challenge): at least
/// `n`, and while `attack` (when given) is still running, so that the figures cover all of it.
async fn honest_rounds<T>(url: &str, n: usize, attack: Option<&tokio::task::JoinHandle<T>>) -> anyhow::Result<Honest> {
    let mut client = ValidatorClient::new(url, Hotkey::ephemeral());
    client.fetch_public_key().await?;
    let body = challenge_body("Say hi", 1, 0.7);
    let (mut lat, mut errors) = (Vec::new(), 0);
    let began = Instant::now();
    let mut round = 0;
    while round < n || attack.is_some_and(|a| !a.is_finished()) {
        round += 1;
        let t = Instant::now();
        let ok = match client.handshake().await {
            Ok(()) => client.challenge_once(&body).await.is_ok(),
            Err(_) => false,
        };
        if ok {
            lat.push(t.elapsed());
        } else {
            errors += 1;
        }
    }
    anyhow::ensure!(!lat.is_empty(), "no honest round succeeded");
    let rounds = lat.len();
    let s = stats(lat, began.elapsed());
    Ok(Honest { rounds, p50_ms: s.p50_ms, p99_ms: s.p99_ms, errors })
}

/// Sends one signed key exchange (it succeeds), then `n` copies with random ciphertexts.
async fn replay_flood(url: String, n: usize, conc: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let victim = Hotkey::ephemeral();
    let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
    let pem = client.fetch_public_key().await?;
    let (key_text, _) = FernetKey::generate();
    let wrapped = wrap_fernet_key(&pem, &key_text)?;
    let (uuid, nonce) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    let signed = key_exchange_body(&victim, &wrapped, &uuid, &nonce, unix_time_f64());
    let http = reqwest::Client::new();
    let exchange = format!("{url}/fiber/key-exchange");
    let first = http.post(&exchange).header("content-type", "application/json").body(signed.clone()).send().await?;
    anyhow::ensure!(first.status().is_success(), "the captured exchange itself was refused: {}", first.status());
    let counts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (http, exchange, signed, wrapped, counts, next) =
            (http.clone(), exchange.clone(), signed.clone(), wrapped.clone(), counts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let random: Vec<u8> = (0..wrapped.len() / 2).map(|_| rand::random()).collect();
                let body = signed.replace(&wrapped, &hex::encode(random));
                let status =
                    match http.post(&exchange).header("content-type", "application/json").body(body).send().await {
                        Ok(r) => r.status().as_u16().to_string(),
                        Err(_) => "no answer".to_string(),
                    };
                *counts.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(counts)
}

/// Opens `n` connections that announce a 2 MiB challenge body and send one byte every two
/// seconds. Returns how many the miner dropped within `window`, the slowest drop, and how many
/// connections it refused outright (counted as dropped).
async fn stalled_bodies(addr: SocketAddr, n: usize, window: Duration) -> anyhow::Result<(usize, Duration, usize)> {
    let head = format!(
        "POST /fiber/challenge HTTP/1.1\r\nHost: {addr}\r\nx-fiber-validator-hotkey-ss58: {}\r\nx-fiber-symmetric-key-uuid: {}\r\ncontent-type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        Hotkey::ephemeral().ss58(),
        uuid::Uuid::new_v4(),
        2 * 1024 * 1024
    );
    let mut tasks = Vec::new();
    for _ in 0..n {
        let head = head.clone();
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let Ok(mut stream) = TcpStream::connect(addr).await else { return (Some(began.elapsed()), true) };
            if stream.write_all(head.as_bytes()).await.is_err() {
                return (Some(began.elapsed()), false);
            }
            let (mut rd, mut wr) = stream.into_split();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut buf = [0u8; 1024];
            let end = tokio::time::sleep(window);
            tokio::pin!(end);
            loop {
                tokio::select! {
                    r = rd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return (Some(began.elapsed()), false),
                        Ok(_) => {} // an answer (408); the close follows
                    },
                    _ = tick.tick() => if wr.write_all(b"x").await.is_err() {
                        return (Some(began.elapsed()), false);
                    },
                    _ = &mut end => return (None, false),
                }
            }
        }));
    }
    let (mut dropped, mut slowest, mut refused) = (0, Duration::ZERO, 0);
    for t in tasks {
        let (gone, at_connect) = t.await?;
        if let Some(after) = gone {
            dropped += 1;
            slowest = slowest.max(after);
        }
        refused += usize::from(at_connect);
    }
    Ok((dropped, slowest, refused))
}

/// `n` malformed or mutated requests on every endpoint, each on its own connection.
async fn malformed_flood(addr: SocketAddr, n: usize, conc: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let counts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..conc.max(1) {
        let (counts, next) = (counts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(9 + task as u64);
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let request = malformed_request(&mut rng, addr);
                let status = match tokio::time::timeout(Duration::from_secs(15), send_raw(addr, &request)).await {
                    Ok(s) => s,
                    Err(_) => "no answer in 15 s".to_string(),
                };
                *counts.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(counts)
}

/// Writes `request` on a fresh connection and returns the answer's status code, or why there is none.
async fn send_raw(addr: SocketAddr, request: &[u8]) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return "connect refused".into() };
    if stream.write_all(request).await.is_err() {
        return "closed while sending".into();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    match answer.strip_prefix(b"HTTP/1.1 ".as_slice()) {
        Some(rest) if rest.len() >= 3 => String::from_utf8_lossy(&rest[..3]).into_owned(),
        _ => "closed without an answer".into(),
    }
}

/// One malformed request: a random method and endpoint, odd headers, and a mutated body seeded
/// from what each endpoint expects.
fn malformed_request(rng: &mut impl Rng, addr: SocketAddr) -> Vec<u8> {
    const PATHS: &[&str] = &[
        "/fiber/key-exchange",
        "/fiber/challenge",
        "/inference",
        "/availability",
        "/fiber/public-key",
        "/health",
        "/metrics",
        "/nope",
        "/fiber/challenge?x=%ff",
    ];
    // Mostly POST, the methods the protocol's routes take, so most requests reach a handler.
    const METHODS: &[&str] = &["POST", "POST", "POST", "POST", "GET", "PUT"];
    let seeds: [Vec<u8>; 6] = [
        format!(
            r#"{{"encrypted_symmetric_key":"00","symmetric_key_uuid":"u","timestamp":{},"nonce":"n","signature":"0x{}","validator_hotkey_ss58":"{}"}}"#,
            unix_time_f64(),
            "ab".repeat(64),
            Hotkey::ephemeral().ss58()
        )
        .into_bytes(),
        [b"gAAAAABk".as_slice(), &[b'A'; 100]].concat(),
        br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#.to_vec(),
        br#"{"timestamp": 1e999999, "nonce": [], "signature": null}"#.to_vec(),
        Vec::new(),
        vec![0xff, 0xfe, 0x00],
    ];
    let mut body = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(0..8) {
        match rng.gen_range(0..4) {
            0 if !body.is_empty() => {
                let i = rng.gen_range(0..body.len());
                body[i] = rng.gen();
            }
            1 => {
                let at = rng.gen_range(0..=body.len());
                let junk: Vec<u8> = (0..rng.gen_range(1..20)).map(|_| rng.gen()).collect();
                body.splice(at..at, junk);
            }
            2 if !body.is_empty() => {
                body.remove(rng.gen_range(0..body.len()));
            }
            _ => body.extend(std::iter::repeat_n(b'}', rng.gen_range(1..4))),
        }
    }
    let hotkey = match rng.gen_range(0..4) {
        0 => Hotkey::ephemeral().ss58().to_string(),
        1 => String::new(),
        2 => "x".repeat(200),
        _ => "5\u{ff}".to_string(),
    };
    let path = PATHS[rng.gen_range(0..PATHS.len())];
    let method = METHODS[rng.gen_range(0..METHODS.len())];
    // The declared length is sometimes short (a longer one is the stalled-body attack's part).
    let length = if rng.gen_range(0..8) == 0 { body.len().saturating_sub(1) } else { body.len() };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nx-fiber-validator-hotkey-ss58: {hotkey}\r\nx-fiber-symmetric-key-uuid: u{}\r\nvalidator-hotkey: {hotkey}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
        rng.gen_range(0..3)
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}
