//! Every size a challenge carries is capped before it costs the engine thread anything (issue 32),
//! against the real binary (`loosh-miner --dev` on the tiny model): a stop list of 300,000 strings,
//! a prompt too large for the context, too many messages or tools, and tool arguments too long are
//! each refused at once with an error naming the cap, and the node answers the next challenge.

mod common;

use common::*;
use loosh_actors::front_door::limits::{
    MAX_MESSAGES, MAX_PROMPT_BYTES, MAX_STOP_BYTES, MAX_STOP_STRINGS, MAX_TOOLS, MAX_TOOL_ARGUMENTS_BYTES,
};
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ValidatorClient};
use serde_json::{json, Value};

/// A validator's challenge with `key` set to `value`.
fn with(key: &str, value: Value) -> Value {
    let mut body = challenge_body("Say hi", 4, 0.7);
    body[key] = value;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_list_past_its_caps_is_refused_with_422_naming_the_cap() {
    let miner = MinerProcess::start(&tiny_model(), true, &[]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());

    // The attack of issue 32: as many one-character stop strings as a body holds.
    let (status, detail) = refused(&mut client, &with("stop", json!(vec!["a"; 300_000]))).await;
    assert_eq!(status, 422, "{detail}");
    assert!(detail.contains("`stop` holds 300000 strings") && detail.contains("at most 16"), "{detail}");

    let (status, detail) = refused(&mut client, &with("stop", json!(vec!["a"; MAX_STOP_STRINGS + 1]))).await;
    assert_eq!(status, 422, "{detail}");
    let (status, detail) = refused(&mut client, &with("stop", json!("x".repeat(MAX_STOP_BYTES + 1)))).await;
    assert_eq!(status, 422, "{detail}");
    assert!(detail.contains("`stop` string 0 is 257 bytes"), "{detail}");

    // The largest list accepted is answered.
    let most = with("stop", json!(vec!["\u{1}".repeat(MAX_STOP_BYTES); MAX_STOP_STRINGS]));
    let (reply, _) = client.challenge(&most).await.expect("16 stop strings of 256 bytes are accepted");
    assert!(!reply.response_text.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_tools_arguments_and_the_prompt_each_have_a_cap_with_its_own_error() {
    let miner = MinerProcess::start(&tiny_model(), true, &[]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());

    let turn = json!({"role": "user", "content": "hi"});
    let (status, detail) = refused(&mut client, &with("messages", json!(vec![turn; MAX_MESSAGES + 1]))).await;
    assert_eq!((status, detail.contains("257 messages")), (422, true), "{detail}");

    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    let (status, detail) = refused(&mut client, &with("tools", json!(vec![tool; MAX_TOOLS + 1]))).await;
    assert_eq!((status, detail.contains("129 tools")), (422, true), "{detail}");

    let call = json!({"id": "c1", "type": "function",
        "function": {"name": "f", "arguments": "x".repeat(MAX_TOOL_ARGUMENTS_BYTES + 1)}});
    let history = json!([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]);
    let (status, detail) = refused(&mut client, &with("messages", history)).await;
    assert_eq!((status, detail.contains("arguments in message 1")), (422, true), "{detail}");

    // Past the front door's own cap on the prompt's bytes: 413.
    let huge = json!([{"role": "user", "content": "x".repeat(MAX_PROMPT_BYTES + 1)}]);
    let mut body = with("messages", huge);
    body["prompt"] = Value::Null;
    let (status, detail) = refused(&mut client, &body).await;
    assert_eq!(status, 413, "{detail}");
    assert!(detail.contains("at most 1048576"), "{detail}");

    // Under it, but more than the worker's 2,048-token context can hold even at the model's
    // longest token: refused by its byte length, before it is rendered or tokenized (413).
    let large = json!([{"role": "user", "content": "word ".repeat(180_000)}]);
    let mut body = with("messages", large);
    body["prompt"] = Value::Null;
    let (status, detail) = refused(&mut client, &body).await;
    assert_eq!(status, 413, "{detail}");
    assert!(detail.contains("more than a context of 2048 tokens holds"), "{detail}");

    // None of it cost the node its next answer.
    let (reply, _) = client.challenge(&challenge_body("Say hi", 4, 0.7)).await.expect("answered");
    assert!(!reply.response_text.is_empty());
}
