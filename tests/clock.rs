//! The miner's clock must not spoil its replies, against the real binary: run under libfaketime
//! (Debian's `faketime`, installed by `scripts/install.sh --test`) with its clock two minutes
//! ahead, it still answers a validator that applies the validator's own rules to the reply token
//! (TTL one hour, at most 60 s in the future).

mod common;

use common::*;
use loosh_actors::protocol::fernet_codec::unix_now;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ValidatorClient};
use serde_json::json;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_whose_clock_runs_two_minutes_ahead_is_still_answered_on_the_validators_clock() {
    assert!(std::path::Path::new(LIBFAKETIME).is_file(), "{LIBFAKETIME} is missing: run scripts/install.sh --test");
    let model = tiny_model();
    let miner = MinerProcess::start(
        &model,
        true,
        &[("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", "+120s"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
    );
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    // The validator's timing metadata comes back with the miner's own clock in it: proof that the
    // miner's clock really is ahead.
    let mut body = challenge_body("Say hello.", 8, 0.7);
    body["metadata"] = json!({"timing_data": {"stages": []}});
    // The client decrypts as the validator does: a token stamped over 60 s in its future is refused.
    let (reply, _) = client.challenge(&body).await.expect("the reply decrypts under the validator's rules");
    let stages = &reply.metadata.as_ref().expect("timing echoed")["timing_data"]["stages"];
    let miner_clock = stages[0]["start_timestamp"].as_f64().unwrap();
    let ours = unix_now() as f64;
    assert!(miner_clock > ours + 100.0, "the miner's clock is not ahead ({miner_clock} vs {ours})");
}
