//! `tool_choice` on the embedded engine, against the real binary (`loosh-miner --dev` on
//! SmolLM2-135M-Instruct, one llama.cpp thread), as an OpenAI server honours it: a named function
//! is called by exactly that name with an object of arguments, `"required"` calls one of the
//! offered functions, `"none"` leaves the tools out of the prompt and extracts no call, and a
//! choice that cannot be honoured is refused with 422 before any work. The engine in a child
//! process (`ENGINE_PROCESS=always`) forces calls the same way.
//!
//! A forced answer is only a tool call, which the validator (reading only `response_text`) would
//! score as empty: it is a 502 unless `TOOL_CALL_TEXT=true` states the call in the text, so these
//! miners run with it, and one without shows the 502 kept.

mod common;

use common::*;
use loosh_actors::protocol::messages::ChallengeReply;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ValidatorClient};
use serde_json::{json, Value};

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "Get the current time in a time zone",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
    ])
}

/// A validator's challenge about the weather, with `tools` and `tool_choice`, greedy so that each
/// run draws the same answer.
fn challenge(tools: Value, tool_choice: Value) -> Value {
    let mut body = challenge_body("What is the weather like in Paris today?", 200, 0.0);
    body["tools"] = tools;
    body["tool_choice"] = tool_choice;
    body
}

fn named(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name}})
}

/// The one tool call of a forced answer, checked as an OpenAI client would read it.
fn the_call(reply: &ChallengeReply) -> (String, serde_json::Map<String, Value>) {
    let calls = reply.tool_calls.as_ref().unwrap_or_else(|| panic!("no tool call in {reply:?}"));
    assert_eq!(calls.len(), 1, "{reply:?}");
    assert_eq!(calls[0].kind, "function");
    assert_eq!(reply.finish_reason, "tool_calls", "{reply:?}");
    let arguments: Value = serde_json::from_str(&calls[0].function.arguments)
        .unwrap_or_else(|e| panic!("arguments {:?} are not JSON: {e}", calls[0].function.arguments));
    let Value::Object(arguments) = arguments else { panic!("arguments are not an object: {arguments}") };
    // TOOL_CALL_TEXT states the call in the text the validator reads.
    assert!(reply.response_text.contains(&calls[0].function.name), "{}", reply.response_text);
    (calls[0].function.name.clone(), arguments)
}

/// A challenge sent to the legacy plain-JSON `/inference` route (no key, no Fernet), claiming a
/// validator hotkey (any is allowed in --dev): its status and JSON body.
async fn plain(miner: &MinerProcess, body: &Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/inference", miner.url))
        .header("validator-hotkey", Hotkey::ephemeral().ss58())
        .json(body)
        .send()
        .await
        .expect("the miner answers");
    let status = res.status().as_u16();
    (status, res.json().await.expect("a JSON body"))
}

async fn named_function_is_called(child: bool) {
    let env = [("TOOL_CALL_TEXT", "true"), ("ENGINE_PROCESS", if child { "always" } else { "never" })];
    let miner = MinerProcess::start(&smollm2_model(), true, &env);
    assert_eq!(children_of(miner.pid()).len(), usize::from(child), "the engine runs where asked");
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());

    // The question is about the weather; the choice names the other function, and wins.
    let (reply, _) = client.challenge(&challenge(weather_tools(), named("get_time"))).await.expect("answered");
    let (name, _arguments) = the_call(&reply);
    assert_eq!(name, "get_time");

    let (reply, _) = client.challenge(&challenge(weather_tools(), named("get_weather"))).await.expect("answered");
    assert_eq!(the_call(&reply).0, "get_weather");

    // A name that needs escaping at every layer (JSON, then the grammar) is called as written.
    let odd = "say \"hi\" \\ café ☕";
    let tools = json!([{"type": "function", "function": {"name": odd, "parameters": {"type": "object"}}},
                       weather_tools()[0]]);
    let (reply, _) = client.challenge(&challenge(tools, named(odd))).await.expect("answered");
    assert_eq!(the_call(&reply).0, odd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_function_is_called_by_exactly_that_name_with_an_object_of_arguments() {
    named_function_is_called(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_in_a_child_process_forces_the_named_function_the_same_way() {
    named_function_is_called(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_calls_one_of_the_offered_functions() {
    let env = [("TOOL_CALL_TEXT", "true"), ("ENABLE_INFERENCE_ENDPOINT", "true")];
    let miner = MinerProcess::start(&smollm2_model(), true, &env);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    let (reply, _) = client.challenge(&challenge(weather_tools(), json!("required"))).await.expect("answered");
    let (name, _) = the_call(&reply);
    assert!(["get_weather", "get_time"].contains(&name.as_str()), "{name}");

    // With one tool offered, "required" can only call that one.
    let one = json!([weather_tools()[1]]);
    let (reply, _) = client.challenge(&challenge(one, json!("required"))).await.expect("answered");
    assert_eq!(the_call(&reply).0, "get_time");

    // The legacy plain-JSON route honours it too.
    let (status, body) = plain(&miner, &challenge(weather_tools(), json!("required"))).await;
    assert_eq!(status, 200, "{body}");
    let reply: ChallengeReply = serde_json::from_value(body).expect("a challenge reply");
    let (name, _) = the_call(&reply);
    assert!(["get_weather", "get_time"].contains(&name.as_str()), "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_leaves_the_tools_out_of_the_prompt_and_extracts_no_call() {
    let miner = MinerProcess::start(&smollm2_model(), true, &[("TOOL_CALL_TEXT", "true")]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());

    let (auto, _) = client.challenge(&challenge(weather_tools(), json!("auto"))).await.expect("answered");
    let (none, _) = client.challenge(&challenge(weather_tools(), json!("none"))).await.expect("answered");
    let (no_tools, _) = client.challenge(&challenge(Value::Null, Value::Null)).await.expect("answered");
    assert!(
        none.usage.prompt_tokens < auto.usage.prompt_tokens,
        "none: {} prompt tokens, auto: {}",
        none.usage.prompt_tokens,
        auto.usage.prompt_tokens
    );
    // Exactly the prompt of the same challenge without tools.
    assert_eq!(none.usage.prompt_tokens, no_tools.usage.prompt_tokens);
    assert!(none.tool_calls.is_none(), "{none:?}");
    assert_ne!(none.finish_reason, "tool_calls");
    assert!(!none.response_text.trim().is_empty());

    // Even a model writing a <tool_call> block (asked to, in the conversation) gets no call
    // extracted: the block stays in the text.
    let mut body = challenge(weather_tools(), json!("none"));
    body["messages"] = json!([{"role": "user", "content":
        "Repeat exactly, with nothing else: <tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>"}]);
    let (reply, _) = client.challenge(&body).await.expect("answered");
    assert!(reply.tool_calls.is_none(), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choice_that_cannot_be_honoured_is_refused_with_422_before_any_work() {
    let miner = MinerProcess::start(&smollm2_model(), true, &[("TOOL_CALL_TEXT", "true")]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());

    let (status, detail) = refused(&mut client, &challenge(weather_tools(), named("launch_rocket"))).await;
    assert_eq!(status, 422, "{detail}");
    assert!(detail.contains("\"launch_rocket\"") && detail.contains("not among the offered tools"), "{detail}");

    let (status, detail) = refused(&mut client, &challenge(Value::Null, json!("required"))).await;
    assert_eq!(status, 422, "{detail}");
    assert!(detail.contains("no tools are offered"), "{detail}");
    let (status, detail) = refused(&mut client, &challenge(json!([]), named("get_weather"))).await;
    assert_eq!(status, 422, "{detail}");
    assert!(detail.contains("no tools are offered"), "{detail}");

    for malformed in [json!("always"), json!(3), json!({"type": "function"}), json!({"function": {"name": 7}})] {
        let (status, detail) = refused(&mut client, &challenge(weather_tools(), malformed.clone())).await;
        assert_eq!(status, 422, "{malformed}: {detail}");
        assert!(detail.starts_with("`tool_choice` must be"), "{detail}");
    }
    assert_eq!(miner.metric("loosh_challenges_total{outcome=\"bad_request\"}"), Some(7.0));
    assert_eq!(miner.metric("loosh_tokens_generated_total"), Some(0.0), "no refusal cost a token");

    // The node answers the next challenge.
    let (reply, _) = client.challenge(&challenge(weather_tools(), named("get_weather"))).await.expect("answered");
    assert_eq!(the_call(&reply).0, "get_weather");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tool_call_text_a_forced_call_is_still_a_502_and_plain_inference_agrees() {
    let miner = MinerProcess::start(&smollm2_model(), true, &[("ENABLE_INFERENCE_ENDPOINT", "true")]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    let (status, detail) = refused(&mut client, &challenge(weather_tools(), named("get_time"))).await;
    assert_eq!(status, 502, "{detail}");

    // The plain route keeps the same rule, and refuses an unknown function with the same 422.
    let (status, body) = plain(&miner, &challenge(weather_tools(), named("get_time"))).await;
    assert_eq!(status, 502, "{body}");
    let (status, body) = plain(&miner, &challenge(weather_tools(), named("launch_rocket"))).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("not among the offered tools")), "{body}");
}
