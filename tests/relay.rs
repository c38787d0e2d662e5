//! A validator's share of this miner belongs to that validator, against the real binary.
//!
//! Every registered miner receives key exchanges signed by every validator, and the signature
//! covers only `"{ts}.{nonce}.{validator}"`. So a competing miner can replay an exchange it saw, or
//! relay one the validator sent it with the wrapped key swapped for one of its own. The honest
//! validator talks from 127.0.0.1; the attacker from 127.0.0.2 and above (loopback aliases: other
//! hosts, as the miner sees them). The Challenge API, out of reach here, is a stand-in server that
//! reports the validator's address as the real one does (its `ip` field).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use common::*;
use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::messages::unix_time_f64;
use loosh_actors::protocol::rsa_keys::wrap_fernet_key;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, key_exchange_body, ClientError, ValidatorClient};
use serde_json::json;

fn attacker(n: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, n]))
}

/// An exchange the validator signed (for us, or for another miner: the signature cannot tell),
/// wrapping `key_text` for `pem`, under `uuid`.
fn signed_exchange(validator: &Hotkey, pem: &str, key_text: &str, uuid: &str) -> String {
    let wrapped = wrap_fernet_key(pem, key_text).unwrap();
    key_exchange_body(validator, &wrapped, uuid, &uuid::Uuid::new_v4().to_string(), unix_time_f64())
}

/// A stand-in Challenge API listing `validator` at 127.0.0.1; its URL and the server's handle.
async fn challenge_api(validator: &Hotkey) -> (String, actix_web::dev::ServerHandle) {
    let listing = json!([{"hotkey_ss58": validator.ss58(), "ip": "127.0.0.1"}]);
    let server = HttpServer::new(move || {
        let listing = listing.clone();
        App::new().route(
            "/validators/active-hotkeys",
            web::get().to(move || {
                let listing = listing.clone();
                async move { HttpResponse::Ok().json(listing) }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle)
}

async fn wait_for_reported_addresses(miner: &MinerProcess) {
    wait_for("the Challenge API's list to be read", Duration::from_secs(30), || async {
        miner.metric("loosh_challenge_api_validators") == Some(1.0)
    })
    .await;
}

/// The validator sends `n` short challenges one after another; how many were answered, and the
/// refusals.
async fn answered_of(client: &ValidatorClient, n: usize) -> (usize, Vec<String>) {
    let mut refused = Vec::new();
    let body = challenge_body("Say hello.", 8, 0.7);
    for _ in 0..n {
        match client.challenge_once(&body).await {
            Ok(_) => {}
            Err(e) => refused.push(e.to_string()),
        }
    }
    (n - refused.len(), refused)
}

/// The relayer: it holds an exchange the validator signed for the relayer's own miner, swaps in
/// our public key wrapping a key it chose and a uuid of its own, and sends it from 127.0.0.`n`.
async fn relayer_with_its_own_key(
    miner: &MinerProcess,
    validator: &Hotkey,
    honest: &mut ValidatorClient,
    n: u8,
) -> ValidatorClient {
    let pem = honest.fetch_public_key().await.unwrap();
    let (theirs, _) = FernetKey::generate();
    let their_wrapped = wrap_fernet_key(&pem, &theirs).unwrap();
    let nonce = uuid::Uuid::new_v4().to_string();
    let for_their_miner = key_exchange_body(validator, &their_wrapped, "their-uuid", &nonce, unix_time_f64());
    let (chosen_text, chosen) = FernetKey::generate();
    let wrapped_for_us = wrap_fernet_key(&pem, &chosen_text).unwrap();
    let relayed = for_their_miner
        .replace(&their_wrapped, &wrapped_for_us)
        .replace("\"their-uuid\"", &format!("\"relayer-uuid-{n}\""));
    let mut relayer = ValidatorClient::from_address(&miner.url, validator.clone(), attacker(n));
    let (status, _) = relayer.post_exchange(relayed).await.unwrap();
    assert_eq!(status, 200, "without strict mode the relayed exchange is accepted (it verifies)");
    relayer.use_key(&format!("relayer-uuid-{n}"), chosen);
    relayer
}

/// The relayer tries to hold `n` deadline-length challenges as the validator, all at once, spread
/// over its addresses.
fn hold_long_challenges(
    relayers: &[ValidatorClient],
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<(), ClientError>>> {
    let long = challenge_body("Tell me everything you know.", 12_000, 0.7);
    (0..n)
        .map(|i| {
            let (relayer, body) = (relayers[i % relayers.len()].clone(), long.clone());
            tokio::spawn(async move { relayer.challenge_once(&body).await.map(|_| ()) })
        })
        .collect()
}

/// How many of the relayer's held challenges were answered; every other one must be a 503 whose
/// body says `refusal`.
async fn relayer_answers(held: Vec<tokio::task::JoinHandle<Result<(), ClientError>>>, refusal: &str) -> usize {
    let mut answered = 0;
    for h in held {
        match h.await.unwrap() {
            Ok(()) => answered += 1,
            Err(ClientError::Status { status: 503, body, .. }) => assert!(body.contains(refusal), "{body}"),
            Err(e) => panic!("the relayer's challenge: {e}"),
        }
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_captured_exchange_replayed_from_16_addresses_costs_the_validator_nothing() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let miner =
        MinerProcess::start(&model, true, &[("VALIDATOR_HOTKEYS", validator.ss58()), ("RATE_LIMIT_ENABLED", "true")]);
    let mut honest = ValidatorClient::new(&miner.url, validator.clone());
    let pem = honest.fetch_public_key().await.unwrap();
    // One of the validator's real exchanges, captured on its way to us.
    let (key_text, key) = FernetKey::generate();
    let captured = signed_exchange(&validator, &pem, &key_text, "captured");
    assert_eq!(honest.post_exchange(captured.clone()).await.unwrap().0, 200);
    honest.use_key("captured", key);

    // Replayed four times from each of 16 addresses: more than the validator's whole budget
    // (HOTKEY_RATE_LIMIT_PER_MINUTE, 60) if replays were charged to it.
    let mut statuses = Vec::new();
    for n in 2..18 {
        let replayer = ValidatorClient::from_address(&miner.url, Hotkey::ephemeral(), attacker(n));
        for _ in 0..4 {
            statuses.push(replayer.post_exchange(captured.clone()).await.unwrap().0);
        }
    }
    assert!(statuses.iter().all(|s| *s == 400 || *s == 429), "a replay was accepted: {statuses:?}");
    assert!(statuses.contains(&400), "{statuses:?}");

    let (answered, refused) = answered_of(&honest, 10).await;
    assert_eq!(answered, 10, "the validator was refused after the replays: {refused:?}");
    assert_eq!(miner.metric("loosh_rsa_operations_total"), Some(1.0), "a replay cost RSA work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relayed_exchange_gets_only_its_own_addresss_small_share_and_the_validator_keeps_its_own() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let (api_url, api) = challenge_api(&validator).await;
    let miner = MinerProcess::start(
        &model,
        true,
        &[
            ("VALIDATOR_HOTKEYS", validator.ss58()),
            ("RATE_LIMIT_ENABLED", "true"),
            ("CHALLENGE_API_URL", &api_url),
            ("MAX_CONCURRENT_REQUESTS", "10"),
            ("MAX_MODEL_LEN", "16384"),
            ("CHALLENGE_DEADLINE_MS", "8000"),
        ],
    );
    wait_for_reported_addresses(&miner).await;
    let mut honest = ValidatorClient::new(&miner.url, validator.clone());
    honest.handshake().await.unwrap();

    let relayer = relayer_with_its_own_key(&miner, &validator, &mut honest, 2).await;
    let held = hold_long_challenges(&[relayer], 10);
    wait_for("the relayer's challenges to be admitted or refused", Duration::from_secs(30), || async {
        miner.metric("loosh_challenges_in_flight").unwrap_or(0.0) >= 1.0
            && miner.metric("loosh_challenges_total{outcome=\"busy\"}").unwrap_or(0.0) >= 8.0
    })
    .await;
    let in_flight = miner.metric("loosh_challenges_in_flight").unwrap();
    assert!(in_flight <= 2.0, "the relayer holds {in_flight} challenges, more than its small share");

    // Meanwhile the validator's own challenges are all answered.
    let (answered, refused) = answered_of(&honest, 10).await;
    assert_eq!(answered, 10, "the validator was refused while the relayer held its share: {refused:?}");

    let relayer_answered = relayer_answers(held, "unreported addresses").await;
    assert!(relayer_answered <= 2, "the relayer got {relayer_answered} answers");
    assert!(miner.metric("loosh_exchange_addresses_total{kind=\"elsewhere\"}").unwrap() >= 1.0);
    api.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_nothing_reported_a_relayer_on_four_addresses_gets_at_most_half_of_what_runs_at_once() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    // No Challenge API, no chain: nothing says where the validator lives.
    let miner = MinerProcess::start(
        &model,
        true,
        &[
            ("VALIDATOR_HOTKEYS", validator.ss58()),
            ("RATE_LIMIT_ENABLED", "true"),
            ("MAX_CONCURRENT_REQUESTS", "10"),
            ("MAX_MODEL_LEN", "16384"),
            ("CHALLENGE_DEADLINE_MS", "8000"),
            ("LLAMA_PARALLEL", "4"),
        ],
    );
    let mut honest = ValidatorClient::new(&miner.url, validator.clone());
    honest.handshake().await.unwrap();
    let mut relayers = Vec::new();
    for n in 2..6 {
        relayers.push(relayer_with_its_own_key(&miner, &validator, &mut honest, n).await);
    }
    // The validator's share is 8 (three quarters of 10), of which 4 can run at once. Its address,
    // present longest, keeps 2; the relayer's four addresses share the other 2.
    let held = hold_long_challenges(&relayers, 12);
    wait_for("the relayer's challenges to be admitted or refused", Duration::from_secs(30), || async {
        miner.metric("loosh_challenges_in_flight").unwrap_or(0.0) >= 1.0
            && miner.metric("loosh_challenges_total{outcome=\"busy\"}").unwrap_or(0.0) >= 10.0
    })
    .await;
    let in_flight = miner.metric("loosh_challenges_in_flight").unwrap();
    assert!(in_flight <= 2.0, "the relayer holds {in_flight} challenges, more than the newer addresses' half");

    let (answered, refused) = answered_of(&honest, 10).await;
    assert_eq!(answered, 10, "the validator was refused while the relayer held its half: {refused:?}");

    let relayer_answered = relayer_answers(held, "in flight").await;
    assert!(relayer_answered <= 2, "the relayer got {relayer_answered} answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_mode_refuses_a_validators_exchange_from_an_address_not_reported_for_it() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let (api_url, api) = challenge_api(&validator).await;
    let miner = MinerProcess::start(
        &model,
        true,
        &[
            ("VALIDATOR_HOTKEYS", validator.ss58()),
            ("CHALLENGE_API_URL", &api_url),
            ("STRICT_VALIDATOR_ADDRESSES", "true"),
        ],
    );
    wait_for_reported_addresses(&miner).await;
    let mut honest = ValidatorClient::new(&miner.url, validator.clone());
    let (reply, _) = honest.challenge(&challenge_body("Say hello.", 8, 0.7)).await.unwrap();
    assert!(reply.usage.completion_tokens >= 1);

    let pem = honest.fetch_public_key().await.unwrap();
    let (key_text, _) = FernetKey::generate();
    let relayer = ValidatorClient::from_address(&miner.url, validator.clone(), attacker(2));
    let (status, body) = relayer.post_exchange(signed_exchange(&validator, &pem, &key_text, "r")).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("reported addresses"), "{body}");
    assert_eq!(miner.metric("loosh_handshakes_total{outcome=\"address_not_reported\"}"), Some(1.0));
    assert_eq!(miner.metric("loosh_rsa_operations_total"), Some(1.0), "the refused exchange cost no RSA work");
    api.stop(false).await;
}
