//! The wait cap (`ADMISSION_MAX_WAIT_MS`) through the real binary, as validators see it: one
//! worker with one sequence, busy with a validator's long challenge. A challenge that would wait
//! past the cap is refused at once (503, counted as `reason="wait"`) where without the cap it
//! queues and comes back late; and a validator that has had no answer from this miner yet is
//! still served past the cap (a validator with no sample of ours gives weight 0).

mod common;

use std::time::{Duration, Instant};

use common::*;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};

/// One sequence and a deadline far beyond the long challenge's planned length, so that waiting
/// for it is a matter of the cap and never of the deadline (`too_late`).
fn start_miner(max_wait_ms: &str) -> MinerProcess {
    MinerProcess::start(
        &tiny_model(),
        true,
        &[
            ("LLAMA_PARALLEL", "1"),
            ("MAX_MODEL_LEN", "4096"),
            ("CHALLENGE_DEADLINE_MS", "50000"),
            ("ADMISSION_MAX_WAIT_MS", max_wait_ms),
            ("HEDGING", "false"),
        ],
    )
}

/// Validator A: a short challenge (the worker is measured on it), then a long one left running;
/// returns A's client and the long challenge's task once the miner holds it.
async fn busy_with_a_long_challenge(
    miner: &MinerProcess,
) -> (ValidatorClient, tokio::task::JoinHandle<Result<u32, ClientError>>) {
    let mut a = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    let (reply, _) = a.challenge(&challenge_body("Name a colour.", 32, 0.7)).await.expect("A's first challenge");
    assert!(reply.usage.completion_tokens >= 2, "the worker's pace is measured on this answer: {reply:?}");
    let long = a.clone();
    let task = tokio::spawn(async move {
        let body = challenge_body("Tell me everything about the sea.", 3000, 0.7);
        long.challenge_once(&body).await.map(|(reply, _)| reply.usage.completion_tokens)
    });
    let end = Instant::now() + Duration::from_secs(30);
    while miner.metric("loosh_challenges_in_flight") != Some(1.0) {
        assert!(Instant::now() < end, "the long challenge never reached the scheduler");
        if task.is_finished() {
            panic!("the long challenge ended before it was seen in flight: {:?}", task.await);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (a, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_wait_cap_a_challenge_is_refused_at_once_unless_its_validator_is_owed_a_sample() {
    let miner = start_miner("300");
    let (a, long) = busy_with_a_long_challenge(&miner).await;

    // A was answered a moment ago: its next challenge would wait the long one out, past 300 ms.
    let sent = Instant::now();
    match a.challenge_once(&challenge_body("And a number?", 16, 0.7)).await {
        Err(ClientError::Status { status: 503, body, retry_after, .. }) => {
            assert!(body.contains("ADMISSION_MAX_WAIT_MS"), "{body}");
            assert!(retry_after.is_some_and(|s| s >= 1), "a refusal says when to come back");
        }
        other => panic!("a challenge that would wait past the cap must get 503, got {other:?}"),
    }
    let refused_in = sent.elapsed();
    assert_eq!(miner.metric("loosh_admission_refusals_total{reason=\"wait\"}"), Some(1.0));
    assert!(!long.is_finished(), "refused while the long challenge ran ({refused_in:?})");

    // B has had no answer from this miner: it is owed a sample, so it waits and is answered.
    let mut b = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    let (reply, _) = b.challenge(&challenge_body("Name an animal.", 16, 0.7)).await.expect("B is served past the cap");
    assert!(reply.usage.completion_tokens >= 1 && !reply.response_text.trim().is_empty());
    assert!(long.await.unwrap().expect("the long challenge is answered") >= 1);
    assert_eq!(miner.metric("loosh_admission_refusals_total{reason=\"wait\"}"), Some(1.0), "B was not refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cap_the_same_challenge_queues_behind_the_long_one() {
    let miner = start_miner("0");
    let (a, long) = busy_with_a_long_challenge(&miner).await;
    let (reply, _) = a.challenge_once(&challenge_body("And a number?", 16, 0.7)).await.expect("queued, then answered");
    assert!(reply.usage.completion_tokens >= 1);
    assert!(long.await.unwrap().expect("the long challenge is answered") >= 1);
    assert_eq!(miner.metric("loosh_admission_refusals_total{reason=\"wait\"}"), Some(0.0));
}
