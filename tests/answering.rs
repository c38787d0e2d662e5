//! Score-aware answering under load, as the validator sees it: seven validators at once against
//! two CPU workers and a short deadline get text or a prompt refusal, never an empty 200 nor an
//! answer after the deadline; and a worker slow to its first token is raced on its idle sibling,
//! which wins.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::front_door::FrontDoor;
use loosh_actors::graph::GraphConfig;
use loosh_actors::protocol::signature::Hotkey;
use loosh_actors::settings::AdmissionSettings;
use loosh_actors::settings::DoorSettings;
use loosh_actors::settings::HedgeSettings;
use loosh_actors::settings::RestartPolicy;
use loosh_actors::settings::SchedulerSettings;
use loosh_actors::settings::SessionSettings;
use loosh_actors::workers::spec::WorkerSpec;
use loosh_actors::workers::worker::WorkerMsg;
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};
use loosh_miner::http::state::HttpSettings;
use loosh_miner::node::HttpNode;

const LOAD: Duration = Duration::from_secs(60);

async fn spawn(workers: Vec<WorkerSpec>, scheduler: SchedulerSettings, door: DoorSettings) -> FrontDoor {
    let graph =
        GraphConfig { sessions: SessionSettings::default(), scheduler, restart: RestartPolicy::default(), workers };
    FrontDoor::open(graph, door, Arc::new(ValidatorAuth::allow_all())).await.expect("graph spawns")
}

/// One challenge's fate, client side.
#[derive(Debug)]
enum Fate {
    Answered { text_len: usize, response_time_ms: u64 },
    Refused { status: u16, retry_after: Option<u64>, round_trip: Duration },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seven_validators_under_mixed_load_get_text_or_a_prompt_refusal_never_an_empty_or_late_answer() {
    let model = tiny_model();
    let deadline = Duration::from_secs(4);
    let g = spawn(
        vec![embedded_worker("cpu0", model.clone(), 2048, 2), embedded_worker("cpu1", model, 2048, 2)],
        SchedulerSettings { max_in_flight: 10, max_queue_per_worker: 10, ..SchedulerSettings::default() },
        DoorSettings { deadline, ..DoorSettings::default() },
    )
    .await;
    wait_for("both workers to load", LOAD, || async { ready_workers(&g).await == 2 }).await;
    let node =
        HttpNode::start(g.clone(), Hotkey::ephemeral().ss58().into(), HttpSettings::default(), "127.0.0.1", 0, 2)
            .unwrap();
    let url = format!("http://{}", node.addr);

    // Seven validators, each sending its challenges one after another, as a validator's rounds
    // do: short ones and the validator's own 12,288-token ones, interleaved.
    // Keys first, one validator after another (the handshake path is not under test here).
    let mut clients = Vec::new();
    for _ in 0..7 {
        let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
        client.handshake().await.expect("handshake");
        clients.push(client);
    }
    let mut validators = Vec::new();
    for (v, mut client) in clients.into_iter().enumerate() {
        validators.push(tokio::spawn(async move {
            let mut fates = Vec::new();
            for i in 0..6usize {
                let max_tokens = if (v + i) % 2 == 0 { 12_288 } else { 16 };
                let body = challenge_body(&format!("Validator {v}, question {i}: say something."), max_tokens, 0.7);
                let sent = Instant::now();
                let fate = match client.challenge(&body).await {
                    Ok((reply, _)) => Fate::Answered {
                        text_len: reply.response_text.trim().len(),
                        response_time_ms: reply.response_time_ms,
                    },
                    Err(ClientError::Status { status, retry_after, .. }) => {
                        Fate::Refused { status, retry_after, round_trip: sent.elapsed() }
                    }
                    Err(e) => panic!("validator {v}: {e}"),
                };
                fates.push((max_tokens, fate));
            }
            fates
        }));
    }
    let mut fates = Vec::new();
    for v in validators {
        fates.extend(v.await.unwrap());
    }

    let answered: Vec<_> = fates.iter().filter(|(_, f)| matches!(f, Fate::Answered { .. })).collect();
    assert!(!answered.is_empty(), "some challenges are answered: {fates:?}");
    for (max_tokens, fate) in &fates {
        match fate {
            Fate::Answered { text_len, response_time_ms } => {
                assert!(*text_len > 0, "an empty 200 ({max_tokens} tokens asked): {fates:?}");
                assert!(
                    *response_time_ms <= deadline.as_millis() as u64,
                    "answered after the deadline ({response_time_ms} ms): {fates:?}"
                );
            }
            Fate::Refused { status, retry_after, round_trip } => {
                // 503: refused at admission, with a hint; 504/502: ran, but had nothing to say.
                assert!([502, 503, 504].contains(status), "unexpected status {status}: {fates:?}");
                if *status == 503 {
                    assert!(retry_after.is_some(), "a 503 carries Retry-After");
                    // Refused at once: long before the deadline a queued challenge would have run to.
                    assert!(*round_trip < deadline, "a refusal that waited {round_trip:?}");
                }
            }
        }
    }

    let metrics = g.metrics().render();
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let refusals = fates.iter().filter(|(_, f)| matches!(f, Fate::Refused { status: 503, .. })).count() as f64;
    let no_answer = fates.iter().filter(|(_, f)| matches!(f, Fate::Refused { status: 502 | 504, .. })).count() as f64;
    assert_eq!(
        count("loosh_admission_refusals_total{reason=\"full\"}")
            + count("loosh_admission_refusals_total{reason=\"too_late\"}")
            + count("loosh_admission_refusals_total{reason=\"wait\"}")
            + count("loosh_admission_refusals_total{reason=\"slowdown\"}"),
        refusals,
        "every 503 is counted at admission"
    );
    assert_eq!(
        count("loosh_no_answer_total{reason=\"no_token\"}") + count("loosh_no_answer_total{reason=\"empty\"}"),
        no_answer,
        "every 502/504 is counted"
    );
    node.stop().await;
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_without_a_token_by_its_deadline_gets_504_not_an_empty_200() {
    let deadline = Duration::from_secs(2);
    let g = spawn(
        vec![embedded_worker("cpu0", tiny_model(), 512, 1)],
        SchedulerSettings::default(),
        DoorSettings { deadline, ..DoorSettings::default() },
    )
    .await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    // The job reaches the engine only after its deadline: the engine cuts it with nothing.
    g.graph.worker_ref("cpu0").await.expect("up").cast(WorkerMsg::SlowFirstTokenForTest(deadline * 2)).unwrap();
    let node =
        HttpNode::start(g.clone(), Hotkey::ephemeral().ss58().into(), HttpSettings::default(), "127.0.0.1", 0, 1)
            .unwrap();
    let mut client = ValidatorClient::new(&format!("http://{}", node.addr), Hotkey::ephemeral());
    match client.challenge(&challenge_body("Say something.", 16, 0.7)).await {
        Err(ClientError::Status { status: 504, body, .. }) => {
            assert!(body.contains("no token was generated before the challenge deadline"), "{body}")
        }
        other => panic!("expected 504, got {other:?}"),
    }
    assert_eq!(g.metrics().no_answer.with_label_values(&["no_token"]).get(), 1);
    assert_eq!(g.metrics().challenges.with_label_values(&["no_answer"]).get(), 1);
    node.stop().await;
    g.stop();
}

/// Short greedy challenges, `n` at once; returns each one's time to first token.
async fn round(g: &FrontDoor, n: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = request(&format!("Question {i}: name a colour."), 8, Duration::from_secs(30));
            req.temperature = 0.0;
            let sent = Instant::now();
            let gen = g.graph.generate(req).await.expect("answered");
            gen.first_token_at.expect("a token").saturating_duration_since(sent)
        }));
    }
    let mut ttfts = Vec::new();
    for t in tasks {
        ttfts.push(t.await.unwrap());
    }
    ttfts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_first_token_is_raced_on_the_idle_worker_and_the_fast_one_wins() {
    let model = tiny_model();
    let scheduler = SchedulerSettings {
        max_in_flight: 16,
        max_queue_per_worker: 16,
        admission: AdmissionSettings { enabled: false, ..AdmissionSettings::default() },
        hedge: HedgeSettings { enabled: true, factor: 3.0, min_after: Duration::from_millis(200) },
        ..SchedulerSettings::default()
    };
    let g = spawn(
        vec![embedded_worker("fast", model.clone(), 1024, 2), embedded_worker("slow", model, 1024, 2)],
        scheduler,
        DoorSettings::default(),
    )
    .await;
    wait_for("both workers to load", LOAD, || async { ready_workers(&g).await == 2 }).await;
    // Times to first token measured on both workers while they are alike: the hedge threshold.
    round(&g, 4).await;
    round(&g, 4).await;

    // Far longer than the threshold: only a hedge can give these challenges their first token sooner.
    let delay = Duration::from_secs(10);
    g.graph.worker_ref("slow").await.expect("slow is up").cast(WorkerMsg::SlowFirstTokenForTest(delay)).unwrap();
    // More at once than the fast worker has sequences: the slow one, idle by every estimate,
    // takes some, and their hedges wait for a sequence of the fast one to come free.
    let mut ttfts = Vec::new();
    for _ in 0..2 {
        ttfts.extend(round(&g, 12).await);
    }
    let hedges = g.metrics().hedges.get();
    let won_by_hedge = g.metrics().hedge_wins.with_label_values(&["hedge"]).get();
    let won_by_first = g.metrics().hedge_wins.with_label_values(&["first"]).get();
    assert!(hedges >= 1, "the slowed worker's challenges were hedged (ttfts {ttfts:?})");
    assert_eq!(won_by_first, 0, "the slowed worker never produced a token first");
    assert_eq!(won_by_hedge, hedges, "every hedge was won by the fast worker");
    ttfts.sort();
    let p99 = ttfts[ttfts.len() * 99 / 100];
    assert!(p99 < delay, "every challenge got its first token before the slowed worker could give one: {ttfts:?}");
    g.stop();
}
