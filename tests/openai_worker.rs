//! The OpenAI-compatible worker against a real third-party server: llama-cpp-python's OpenAI
//! server (PyPI `llama-cpp-python[server]`) with SmolLM2, on loopback.

mod common;

use std::time::Duration;

use common::*;
use loosh_actors::inference::request::{BackendError, FinishReason};
use loosh_actors::protocol::messages::ChatMessage;
use loosh_actors::scheduler::ScheduleError;
use loosh_actors::settings::RestartPolicy;
use serde_json::json;

const READY: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_worker_streams_a_sensible_answer_and_honours_tools_and_history() {
    let server = LlamaCppPythonServer::start(&smollm2_model(), free_port());
    server.ready().await;
    let g =
        graph(vec![openai_worker("api0", &server.base_url(), LlamaCppPythonServer::ALIAS)], 4, fast_restarts(3)).await;
    wait_for("the worker to probe its server", READY, || async { ready_workers(&g).await == 1 }).await;

    let mut req = request("What is the capital of France? Answer in one short sentence.", 48, Duration::from_secs(50));
    req.temperature = 0.0;
    let gen = server.expect_ok(g.graph.generate(req).await).await;
    assert!(gen.text.to_lowercase().contains("paris"), "{:?}", gen.text);
    assert_eq!(gen.finish_reason, FinishReason::Stop);
    assert!(gen.completion_tokens > 0 && gen.first_token_at.is_some());

    // Multi-turn with tools offered: the server accepts the request and the stream ends cleanly.
    let mut req = request("", 24, Duration::from_secs(50));
    req.messages = vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "What is the weather in Paris?"),
    ];
    req.tools = Some(vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
    ]);
    req.tool_choice = Some(json!("auto"));
    req.temperature = 0.0; // greedy: the check is about the request, not the sample
    let gen = server.expect_ok(g.graph.generate(req).await).await;
    assert!(gen.completion_tokens <= 24, "{gen:?}");
    assert!(
        matches!(gen.finish_reason, FinishReason::Stop | FinishReason::Length | FinishReason::ToolCalls),
        "{gen:?}"
    );
    // llama-cpp-python's server sometimes ends this tools request at once (no tokens, `stop`);
    // what is checked here is that the miner sends it and turns the stream into a clean answer.
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_cuts_a_streamed_answer_and_returns_what_arrived() {
    // The tiny random-weight model almost never stops by itself: the deadline has to stop it.
    let model = tiny_model();
    let server = LlamaCppPythonServer::start(&model, free_port());
    server.ready().await;
    let g =
        graph(vec![openai_worker("api0", &server.base_url(), LlamaCppPythonServer::ALIAS)], 4, fast_restarts(3)).await;
    wait_for("the worker to probe its server", READY, || async { ready_workers(&g).await == 1 }).await;

    // Greedy, so that no chance end-of-generation token ends it before the deadline does.
    let mut req = request("Write a very long story about the sea.", 12_288, Duration::from_millis(1000));
    req.temperature = 0.0;
    let deadline = req.deadline;
    let gen = server.expect_ok(g.graph.generate(req).await).await;
    assert_eq!(gen.finish_reason, FinishReason::Length);
    assert!(gen.cut_by_deadline);
    assert!(gen.completion_tokens > 0 && !gen.text.is_empty(), "what arrived is kept: {gen:?}");
    assert!(gen.finished_at <= deadline + Duration::from_millis(250));
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_request_fails_fast_and_the_worker_recovers_when_it_returns() {
    let mut server = LlamaCppPythonServer::start(&smollm2_model(), free_port());
    server.ready().await;
    let policy = RestartPolicy {
        max_restarts: 50,
        within: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
    };
    let g = graph(vec![openai_worker("api0", &server.base_url(), LlamaCppPythonServer::ALIAS)], 4, policy).await;
    wait_for("the worker to probe its server", READY, || async { ready_workers(&g).await == 1 }).await;

    let busy = g.clone();
    let long = tokio::spawn(async move {
        busy.graph.generate(request("Write a long story.", 4096, Duration::from_secs(40))).await
    });
    wait_for("the request to be streaming", READY, || async { g.graph.status().await.unwrap().in_flight == 1 }).await;
    let worker = g.graph.worker_ref("api0").await.unwrap();
    wait_for("tokens to arrive", READY, || async {
        ractor::call_t!(worker, loosh_actors::workers::worker::WorkerMsg::Snapshot, 1000).is_ok_and(|s| s.active == 1)
    })
    .await;
    server.kill();
    match long.await.unwrap() {
        Err(ScheduleError::Backend(BackendError::Unreachable(msg))) => assert!(msg.contains("127.0.0.1"), "{msg}"),
        // The stream may also end cleanly with what had arrived if the server closed it in order.
        Ok(gen) => assert!(gen.completion_tokens > 0),
        other => panic!("expected a clear failure, got {other:?}"),
    }
    wait_for("the worker to leave the schedule", READY, || async { ready_workers(&g).await == 0 }).await;
    assert_eq!(g.graph.status().await.unwrap().availability(), Err("no backend worker is ready"));

    server.restart();
    server.ready().await;
    wait_for("the worker to come back by itself", READY, || async { ready_workers(&g).await == 1 }).await;
    let gen = server.expect_ok(g.graph.generate(request("Say hi", 8, Duration::from_secs(30))).await).await;
    assert!(gen.completion_tokens > 0);
    assert!(g.workers().await[0].restarts >= 1);
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_crashes_is_named_in_the_failure_with_its_signal_and_log() {
    // What a segfault in the server looks like to the test: its request fails with a broken stream.
    let server = LlamaCppPythonServer::start(&tiny_model(), free_port());
    server.ready().await;
    assert_eq!(server.exited(), None, "a running server has not exited");
    server.signal("SEGV");
    let failure = tokio::spawn(async move {
        server.expect_ok(Err::<(), _>("stream broke: error decoding response body")).await;
    })
    .await
    .expect_err("a request that failed under a crashed server fails the test");
    let message = *failure.into_panic().downcast::<String>().unwrap();
    assert!(message.starts_with("llama-cpp-python server exited with signal 11"), "{message}");
    assert!(message.contains("Uvicorn running on"), "the tail of the server's log is shown: {message}");
    assert!(message.contains("stream broke"), "and the request's own error: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_health_probe_cuts_a_streaming_answer_short() {
    // As llama-cpp-python's server runs by default, it ends the stream in progress as soon as
    // another request waits for the model: a health probe sent mid-stream would cut the answer.
    let server = LlamaCppPythonServer::start_with(&tiny_model(), free_port(), &["--interrupt_requests", "true"]);
    server.ready().await;
    let mut spec = openai_worker("api0", &server.base_url(), LlamaCppPythonServer::ALIAS);
    if let loosh_actors::settings::EngineSpec::OpenAi(o) = &mut spec.engine {
        o.health_every = Duration::from_millis(20);
    }
    let g = graph(vec![spec], 1, fast_restarts(3)).await;
    wait_for("the worker to probe its server", READY, || async { ready_workers(&g).await == 1 }).await;

    let mut req = request("Write a very long story about the sea.", 256, Duration::from_secs(60));
    req.temperature = 0.0;
    let gen = server.expect_ok(g.graph.generate(req).await).await;
    assert_eq!((gen.finish_reason, gen.completion_tokens), (FinishReason::Length, 256), "{gen:?}");
    assert!(!gen.cut_by_deadline);
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_is_clamped_to_the_context_the_server_has_left_after_the_prompt() {
    use loosh_actors::inference::openai::{estimate_prompt_tokens, OpenAiClient, OpenAiSpec};
    let n_ctx = 512;
    let server = LlamaCppPythonServer::start_with(&tiny_model(), free_port(), &["--n_ctx", &n_ctx.to_string()]);
    server.ready().await;
    let client = OpenAiClient::new(OpenAiSpec {
        base_url: server.base_url(),
        model: LlamaCppPythonServer::ALIAS.into(),
        n_parallel: 1,
        api_key: None,
        request_timeout: Duration::from_secs(120),
        health_every: Duration::from_secs(3600),
        max_model_len: Some(n_ctx),
    })
    .unwrap();
    server.expect_ok(client.health().await).await;
    assert_eq!(client.context_len(), Some(n_ctx), "llama-cpp-python reports no length: the setting stands");

    // The validator's 12,288 tokens, on a 512-token server: sent as what is left after the prompt.
    let mut req =
        request("Tell me about the sea, the ships and the harbours of the north.", 12_288, Duration::from_secs(60));
    req.temperature = 0.0;
    let clamped = client.clamped_max_tokens(&req).unwrap();
    assert_eq!(clamped, n_ctx - estimate_prompt_tokens(&req));
    let gen = server.expect_ok(client.chat(&req).await).await;
    assert!(gen.prompt_tokens <= estimate_prompt_tokens(&req), "the estimate errs on the long side: {gen:?}");
    assert!(gen.completion_tokens > 0 && gen.completion_tokens <= clamped, "{gen:?}");

    // A prompt that cannot fit is refused here as too long (422), not sent for the server to fail.
    let long = request(&"harbour ".repeat(400), 12_288, Duration::from_secs(60));
    match client.chat(&long).await {
        Err(BackendError::PromptTooLong { n_ctx: 512, .. }) => {}
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}
