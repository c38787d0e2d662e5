//! The front door against the real binary: what an attacker on the open internet can and cannot
//! make the miner do. Each test starts `loosh-miner --dev` on the tiny model.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::messages::unix_time_f64;
use loosh_actors::protocol::rsa_keys::wrap_fernet_key;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, key_exchange_body, ClientError, ValidatorClient};
use serde_json::Value;

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn public_pem(miner: &MinerProcess) -> String {
    let v: Value = http().get(format!("{}/fiber/public-key", miner.url)).send().await.unwrap().json().await.unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

async fn post_exchange(miner: &MinerProcess, body: String) -> (u16, Option<String>, Value) {
    let res = http()
        .post(format!("{}/fiber/key-exchange", miner.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

fn random_ciphertext() -> String {
    (0..256).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

fn metric(miner: &MinerProcess, name: &str) -> f64 {
    miner.metric(name).unwrap_or_else(|| panic!("{name} is not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_key_exchange_gets_400_whatever_its_ciphertext_and_costs_no_rsa() {
    let model = tiny_model();
    let miner = MinerProcess::start(&model, true, &[]);
    let pem = public_pem(&miner).await;
    let validator = Hotkey::ephemeral();
    let (key_text, _) = FernetKey::generate();
    let wrapped = wrap_fernet_key(&pem, &key_text).unwrap();
    let body = key_exchange_body(&validator, &wrapped, "uuid-1", "nonce-1", unix_time_f64());

    assert_eq!(post_exchange(&miner, body.clone()).await.0, 200);
    let rsa_after_honest = metric(&miner, "loosh_rsa_operations_total");
    assert_eq!(rsa_after_honest, 1.0);

    // Anyone who saw that exchange can resend it with other ciphertexts: the signature does not
    // cover them. Each copy is refused before any RSA work.
    for _ in 0..50 {
        let replay = body.replace(&wrapped, &random_ciphertext());
        let (status, _, v) = post_exchange(&miner, replay).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["detail"], "nonce already used");
    }
    let (status, _, _) = post_exchange(&miner, body).await;
    assert_eq!(status, 400, "the identical body too");
    assert_eq!(metric(&miner, "loosh_rsa_operations_total"), rsa_after_honest, "no RSA operation for a replay");
    assert_eq!(metric(&miner, "loosh_handshakes_total{outcome=\"replay\"}"), 51.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_exchanges_are_named_precisely_and_cost_no_rsa() {
    let model = tiny_model();
    let miner = MinerProcess::start(&model, true, &[]);
    let pem = public_pem(&miner).await;
    let validator = Hotkey::ephemeral();
    let wrapped = wrap_fernet_key(&pem, &FernetKey::generate().0).unwrap();
    let good = key_exchange_body(&validator, &wrapped, "u", "n", unix_time_f64());

    // A timestamp text longer than 32 bytes is refused before it is parsed or verified.
    let v: Value = serde_json::from_str(&good).unwrap();
    let ts_text = format!("{}{}", v["timestamp"], "0".repeat(40));
    let long_ts = good.replacen(&v["timestamp"].to_string(), &ts_text, 1);
    let (status, _, body) = post_exchange(&miner, long_ts).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("at most 32"), "{body}");

    // A signature that is not 0x + 128 hex is named as such (no verification spent to find out).
    let sig = v["signature"].as_str().unwrap();
    let (status, _, body) = post_exchange(&miner, good.replace(sig, "0x1234")).await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"], "invalid signature: signature must be 0x followed by 128 hex characters");

    // A well-formed signature by someone else.
    let forged = Hotkey::ephemeral().sign_hex(b"anything");
    let (status, _, body) = post_exchange(&miner, good.replace(sig, &forged)).await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"], "invalid signature: signature does not verify for this hotkey");

    // A key-exchange body over 8 KiB is refused by size.
    let (status, _, _) = post_exchange(&miner, format!("{{\"pad\": \"{}\"}}", "x".repeat(9000))).await;
    assert_eq!(status, 413);
    assert_eq!(metric(&miner, "loosh_rsa_operations_total"), 0.0);
    // And the genuine exchange still goes through.
    assert_eq!(post_exchange(&miner, good).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_miner_answers_503_with_retry_after_and_one_validator_cannot_take_every_slot() {
    let model = tiny_model();
    let miner = MinerProcess::start(
        &model,
        true,
        &[
            ("MAX_CONCURRENT_REQUESTS", "2"),
            ("MAX_IN_FLIGHT_PER_VALIDATOR", "1"),
            ("CHALLENGE_DEADLINE_MS", "4000"),
            ("MAX_MODEL_LEN", "8192"),
        ],
    );
    let greedy = Hotkey::ephemeral();
    let mut greedy_first = ValidatorClient::new(&miner.url, greedy.clone());
    let mut greedy_second = ValidatorClient::new(&miner.url, greedy);
    let mut other = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    let mut late = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    for c in [&mut greedy_first, &mut greedy_second, &mut other, &mut late] {
        c.handshake().await.unwrap();
    }
    let in_flight = |n: f64| {
        let miner = &miner;
        wait_for("challenges to be in flight", Duration::from_secs(30), move || async move {
            miner.metric("loosh_challenges_in_flight") == Some(n)
        })
    };

    // Challenges that run until the deadline cuts them.
    let long = challenge_body("Tell me everything.", 12_000, 0.7);
    let short = challenge_body("hi", 4, 0.7);
    let body = long.clone();
    let first = tokio::spawn(async move { greedy_first.challenge_once(&body).await.map(|_| ()) });
    in_flight(1.0).await;

    // The same validator's second challenge: its one slot is taken, though the miner has room.
    match greedy_second.challenge_once(&short).await {
        Err(ClientError::Status { status: 503, retry_after: Some(secs), body, .. }) => {
            assert!(body.contains("this validator already has 1 challenges in flight"), "{body}");
            assert!((1..=30).contains(&secs));
        }
        other => panic!("expected 503 with Retry-After, got {other:?}"),
    }

    // Another validator takes the last slot; then the miner is full for everyone.
    let body = long.clone();
    let second = tokio::spawn(async move { other.challenge_once(&body).await.map(|_| ()) });
    in_flight(2.0).await;
    match late.challenge_once(&short).await {
        Err(ClientError::Status { status: 503, retry_after: Some(secs), body, .. }) => {
            assert!(body.contains("at capacity"), "{body}");
            assert!((1..=30).contains(&secs));
        }
        other => panic!("expected 503 with Retry-After, got {other:?}"),
    }
    first.await.unwrap().expect("the first long challenge is answered");
    second.await.unwrap().expect("the second long challenge is answered");
    // Slots come back: the refused validator is served now.
    greedy_second.challenge_once(&short).await.expect("served once a slot is free");
}

#[test]
fn stalled_bodies_and_headers_are_dropped_while_an_honest_validator_is_served() {
    let model = tiny_model();
    let miner = MinerProcess::start(
        &model,
        true,
        &[
            ("BODY_READ_TIMEOUT_SECONDS", "2"),
            ("HEADER_READ_TIMEOUT_SECONDS", "2"),
            ("MAX_BODY_BYTES", "4096"),
            // The deadlines are under test here, not the per-address cap (tests/hog.rs): room for
            // all 200 stalled connections from this one address.
            ("MAX_CONNECTIONS_PER_ADDRESS", "256"),
        ],
    );
    let host = miner.url.strip_prefix("http://").unwrap().to_string();
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(&host).unwrap();
        if i % 2 == 0 {
            // Announces a body, sends one byte of it, then nothing.
            write!(
                s,
                "POST /fiber/key-exchange HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{{"
            )
            .unwrap();
        } else {
            // Never finishes its headers.
            write!(s, "POST /fiber/challenge HTTP/1.1\r\nHost: {host}\r\n").unwrap();
        }
        stalled.push(s);
    }

    // Meanwhile an honest validator handshakes and gets its answer.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
        let (reply, _) = client.challenge(&challenge_body("hi", 4, 0.7)).await.unwrap();
        assert!(reply.usage.completion_tokens >= 1);
        // A challenge body over MAX_BODY_BYTES is refused by size.
        match client.challenge_once(&challenge_body(&"x".repeat(8000), 4, 0.7)).await {
            Err(ClientError::Status { status: 413, .. }) => {}
            other => panic!("expected 413, got {other:?}"),
        }
    });

    // Every stalled connection is closed by the miner (408), none left hanging. The read limit
    // only bounds the test if the miner never closes them.
    for (i, mut s) in stalled.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = Vec::new();
        let read = s.read_to_end(&mut out);
        assert!(read.is_ok(), "stalled connection {i} was never closed: {read:?}");
        let text = String::from_utf8_lossy(&out);
        assert!(out.is_empty() || text.starts_with("HTTP/1.1 408"), "connection {i}: {text}");
    }
    let body_timeouts = metric(&miner, "loosh_rejected_requests_total{reason=\"body_timeout\",route=\"key-exchange\"}");
    assert_eq!(body_timeouts, 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_per_ip_and_per_verified_validator() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let miner = MinerProcess::start(
        &model,
        true,
        &[
            ("VALIDATOR_HOTKEYS", validator.ss58()),
            ("RATE_LIMIT_ENABLED", "true"),
            ("RATE_LIMITS", "availability=1000/1000,public_key=3/6"),
            ("HOTKEY_RATE_LIMIT_PER_MINUTE", "3"),
        ],
    );
    // The validator's own budget: one key exchange and two challenges, then 429.
    let mut client = ValidatorClient::new(&miner.url, validator.clone());
    client.handshake().await.unwrap();
    let body = challenge_body("hi", 4, 0.7);
    client.challenge_once(&body).await.unwrap();
    client.challenge_once(&body).await.unwrap();
    match client.challenge_once(&body).await {
        Err(ClientError::Status { status: 429, retry_after: Some(secs), .. }) => assert!((1..=60).contains(&secs)),
        other => panic!("expected 429 with Retry-After, got {other:?}"),
    }

    // Per IP: the handshake's public-key fetch was the first of three for an anonymous caller.
    let url = format!("{}/fiber/public-key", miner.url);
    for _ in 0..2 {
        assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
    }
    let res = http().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    // A caller naming an allowed validator has a larger budget of its own.
    let res = http().get(&url).header("validator-hotkey", validator.ss58()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(metric(&miner, "loosh_rate_limited_total{route=\"public_key\"}"), 1.0);
    assert_eq!(metric(&miner, "loosh_rate_limited_total{route=\"hotkey\"}"), 1.0);
}

#[test]
fn no_secret_reaches_the_start_up_log() {
    let model = tiny_model();
    // An OpenAI-compatible worker (nothing listens there) beside the embedded one: its spec, key
    // included, is what the start-up log prints for each worker.
    let workers = r#"[{"kind": "embedded"}, {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test-do-not-print-4242"}]"#;
    let miner = MinerProcess::start(&model, true, &[("WORKERS", workers), ("OPENAI_API_KEY", "sk-also-secret-4343")]);
    let log = miner.log.lock().unwrap().join("\n");
    assert!(log.contains("worker configured") && log.contains("127.0.0.1:9/v1"), "the workers were logged: {log}");
    assert!(!log.contains("sk-also-secret-4343"), "OPENAI_API_KEY leaked: {log}");
    assert!(!log.contains("sk-test-do-not-print-4242"), "the worker's api_key leaked: {log}");
    assert!(!log.contains("sk-test-do-not-print-4242"), "the API key leaked: {log}");
}
