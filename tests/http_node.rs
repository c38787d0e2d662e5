//! The HTTP surface in process: the actor graph plus the actix server, driven by the Rust
//! validator client and plain requests.

mod common;

use std::time::Duration;

use common::*;
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::front_door::FrontDoor;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};
use loosh_miner::http::state::HttpSettings;
use loosh_miner::node::HttpNode;
use serde_json::{json, Value};

const LOAD: Duration = Duration::from_secs(60);

fn node(graph: &FrontDoor, settings: HttpSettings) -> HttpNode {
    HttpNode::start(graph.clone(), Hotkey::ephemeral().ss58().into(), settings, "127.0.0.1", 0, 1).unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_is_honest_while_no_worker_can_answer() {
    let missing = std::env::temp_dir().join("loosh-no-such-model.gguf");
    let g = graph(vec![cpu_worker("cpu0", missing, 256)], 4, fast_restarts(0)).await;
    wait_for("the worker to be given up on", LOAD, || async {
        g.workers().await.iter().any(|w| matches!(w.phase, loosh_actors::workers::supervisor::WorkerPhase::Down { .. }))
    })
    .await;
    let n = node(&g, HttpSettings::default());
    let url = format!("http://{}", n.addr);

    let v: Value = http().get(format!("{url}/availability")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"available": false, "reason": "no backend worker is ready"}));

    // A challenge is refused with 503 and a retry hint before any key lookup.
    let res = http()
        .post(format!("{url}/fiber/challenge"))
        .header("x-fiber-validator-hotkey-ss58", Hotkey::ephemeral().ss58())
        .header("x-fiber-symmetric-key-uuid", "u")
        .body("gAAAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["detail"], "no backend worker is ready");

    // The operator's routes are not on the public port.
    assert_eq!(http().get(format!("{url}/metrics")).send().await.unwrap().status(), 404);
    let ops = format!("http://{}", n.ops_addr.expect("metrics on their own address by default"));
    let metrics = http().get(format!("{ops}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("loosh_challenges_total{outcome=\"unavailable\"} 1"), "{metrics}");
    assert!(metrics.contains("loosh_workers_ready 0"));
    n.stop().await;
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_inference_endpoint_is_off_by_default_and_whitelisted_when_on() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let auth = ValidatorAuth::new(true, [validator.ss58().to_string()]);
    let g = graph_with_auth(vec![cpu_worker("cpu0", model, 512)], 4, fast_restarts(1), auth).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let body = challenge_body("hello", 4, 0.7);

    let off = node(&g, HttpSettings::default());
    let res = http()
        .post(format!("http://{}/inference", off.addr))
        .header("validator-hotkey", validator.ss58())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("ENABLE_INFERENCE_ENDPOINT"));
    let res = http().get(format!("http://{}/no/such/route", off.addr)).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["detail"], "no such endpoint");
    off.stop().await;

    let settings = HttpSettings { inference_enabled: true, ..HttpSettings::default() };
    let on = node(&g, settings);
    let url = format!("http://{}/inference", on.addr);
    assert_eq!(http().post(&url).json(&body).send().await.unwrap().status(), 403, "no hotkey header");
    let stranger = Hotkey::ephemeral();
    assert_eq!(
        http().post(&url).header("validator-hotkey", stranger.ss58()).json(&body).send().await.unwrap().status(),
        403
    );
    let res = http().post(&url).header("validator-hotkey", validator.ss58()).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let reply: Value = res.json().await.unwrap();
    assert!(reply["response_text"].is_string());
    assert!(reply["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
    on.stop().await;
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_validator_client_re_handshakes_after_the_miner_forgets_its_key() {
    let model = tiny_model();
    let g = graph(vec![cpu_worker("cpu0", model, 512)], 4, fast_restarts(1)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let n = node(&g, HttpSettings::default());
    let mut client = ValidatorClient::new(&format!("http://{}", n.addr), Hotkey::ephemeral());
    client.handshake().await.unwrap();
    let body = challenge_body("hi", 4, 0.7);
    assert!(client.challenge_once(&body).await.is_ok());

    // The miner drops the validator's keys (as when it loses its permit): the next challenge gets a
    // 401 carrying the public key, and the client's one retry after a re-handshake succeeds.
    g.keys().revoke(client.hotkey().ss58());
    match client.challenge_once(&body).await {
        Err(ClientError::Status { status: 401, body, .. }) => {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["requires_handshake"], true);
            assert_eq!(v["public_key"], g.rsa.public_pem());
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let (reply, _) = client.challenge(&body).await.unwrap();
    assert!(reply.usage.completion_tokens >= 1);
    n.stop().await;
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_a_first_validator_set_is_loaded_the_miner_says_why_it_is_unavailable() {
    let missing = std::env::temp_dir().join("loosh-no-such-model.gguf");
    // The whitelist on, nobody listed yet (the chain has not answered), and no allow-all opt-in.
    let auth = ValidatorAuth::with_policy(true, false, []);
    let g = graph_with_auth(vec![cpu_worker("cpu0", missing, 256)], 4, fast_restarts(0), auth).await;
    let n = node(&g, HttpSettings::default());
    let v: Value = http().get(format!("http://{}/availability", n.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["available"], false);
    assert!(v["reason"].as_str().unwrap().contains("no validator is allowed yet"), "{v}");

    // The chain's first set arrives: the reason moves on to the next thing missing.
    let validator = Hotkey::ephemeral();
    g.auth.replace(loosh_actors::authorization::Source::Chain, [validator.ss58().to_string()].into());
    let v: Value = http().get(format!("http://{}/availability", n.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!({"available": false, "reason": "no backend worker is ready"}));
    n.stop().await;
    g.stop();
}

/// A graph with one loaded worker restarted on a crash, its HTTP node, and a validator that has
/// exchanged a key and been answered once: the state a crash test starts from.
async fn answering_before_a_crash() -> (FrontDoor, HttpNode, ValidatorClient, Value) {
    let g = graph(vec![cpu_worker("cpu0", tiny_model(), 512)], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let n = node(&g, HttpSettings::default());
    let mut client = ValidatorClient::new(&format!("http://{}", n.addr), Hotkey::ephemeral());
    client.handshake().await.unwrap();
    let body = challenge_body("hi", 4, 0.7);
    assert!(client.challenge_once(&body).await.is_ok());
    (g, n, client, body)
}

/// The scheduler crashes while a validator holds a key: the root restarts it, the worker is
/// announced to it again, and the validator's next challenge (same key) gets 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_scheduler_crashes_challenges_are_answered_again() {
    let (g, n, client, body) = answering_before_a_crash().await;

    let first = g.graph.scheduler.get();
    first.cast(loosh_actors::scheduler::SchedulerMsg::CrashForTest).unwrap();
    let available = format!("http://{}/availability", n.addr);
    wait_for("a new scheduler, available again", LOAD, || async {
        let v: Value = http().get(&available).send().await.unwrap().json().await.unwrap();
        g.graph.scheduler.get().get_id() != first.get_id() && v["available"] == true
    })
    .await;
    let (reply, _) = client.challenge_once(&body).await.expect("200 with the key held before the crash");
    assert!(reply.usage.completion_tokens >= 1);
    n.stop().await;
    g.stop();
}

/// The key registry crashes, and its key sessions with it: the root starts a fresh one, the
/// validator's key is gone (a 401 carrying the public key, as after a miner restart), and a new
/// key exchange then a challenge both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_key_registry_crashes_a_validator_exchanges_a_key_again_and_is_answered() {
    let (g, n, mut client, body) = answering_before_a_crash().await;

    let first = g.keys().registry();
    first.cast(loosh_actors::session::registry::KeyRegistryMsg::CrashForTest).unwrap();
    wait_for("a new key registry", LOAD, || async { g.keys().registry().get_id() != first.get_id() }).await;
    assert_eq!(g.keys().sessions(), 0, "the crashed registry's sessions are gone from the index");
    match client.challenge_once(&body).await {
        Err(ClientError::Status { status: 401, body, .. }) => {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["requires_handshake"], true);
            assert_eq!(v["public_key"], g.rsa.public_pem());
        }
        other => panic!("expected a 401 asking for a new key exchange, got {other:?}"),
    }
    client.handshake().await.expect("a key exchange with the new registry");
    let (reply, _) = client.challenge_once(&body).await.expect("200 under the new key");
    assert!(reply.usage.completion_tokens >= 1);
    assert_eq!(g.keys().sessions(), 1);
    n.stop().await;
    g.stop();
}
