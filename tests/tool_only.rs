//! Issue 31: an answer that is only a tool call, from a real OpenAI-compatible server
//! (llama-cpp-python's, its `chatml-function-calling` format forcing the named function), through
//! the real binary. The validator reads only `response_text`: by default such an answer is a 502
//! (no sample, where an empty or canned text would be scored), and with `TOOL_CALL_TEXT=true` it
//! is stated in words that name the call, drawn from several wordings.

mod common;

use common::*;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};
use serde_json::json;

fn forced_tool_call() -> serde_json::Value {
    let mut body = challenge_body("What is the weather in Paris?", 48, 0.7);
    body["tools"] = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }}]);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    body
}

fn miner_on(server: &LlamaCppPythonServer, extra: &[(&str, &str)]) -> MinerProcess {
    let workers = json!([{"kind": "openai", "name": "api0", "base_url": server.base_url(),
        "model": LlamaCppPythonServer::ALIAS}])
    .to_string();
    let mut vars = vec![("WORKERS", workers.as_str())];
    vars.extend_from_slice(extra);
    MinerProcess::start(&tiny_model(), true, &vars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_only_answer_is_a_502_by_default_and_stated_in_words_when_asked() {
    let server =
        LlamaCppPythonServer::start_with(&smollm2_model(), free_port(), &["--chat_format", "chatml-function-calling"]);
    server.ready().await;

    let miner = miner_on(&server, &[]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    match client.challenge(&forced_tool_call()).await {
        Err(ClientError::Status { status: 502, body, .. }) => assert!(body.contains("tool"), "{body}"),
        other => panic!("a tool-only answer must not be a 200 the validator scores as text: {other:?}"),
    }
    assert_eq!(miner.metric("loosh_no_answer_total{reason=\"tool_calls_only\"}"), Some(1.0));
    drop(miner);

    let miner = miner_on(&server, &[("TOOL_CALL_TEXT", "true")]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    let (reply, _) = client.challenge(&forced_tool_call()).await.expect("stated in words");
    let calls = reply.tool_calls.as_deref().unwrap_or_default();
    assert_eq!(calls.len(), 1, "{reply:?}");
    assert_eq!(calls[0].function.name, "get_weather");
    assert!(reply.response_text.contains("get_weather"), "the text names the call: {reply:?}");
    assert_eq!(reply.finish_reason, "tool_calls");
}
