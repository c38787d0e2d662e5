//! The embedded engine on its own (no actors): prompt-prefix reuse gives the same answers as a
//! full prefill, and its accounting says what it reused.

mod common;

use std::time::{Duration, Instant};

use common::tiny_model;
use loosh_actors::inference::embedded::{load_model, EmbeddedEngine, EmbeddedSpec};
use loosh_actors::inference::request::{Generation, GenerationRequest};
use loosh_actors::protocol::messages::ChatMessage;

fn spec(prefix_cache: bool, n_parallel: u32) -> EmbeddedSpec {
    EmbeddedSpec {
        model_path: tiny_model(),
        n_ctx: 1024,
        threads: 1,
        gpu_layers: 0,
        gpu_device: None,
        n_batch: 256,
        n_parallel,
        prefix_cache,
        stall_after: loosh_actors::settings::DEFAULT_STALL_AFTER,
    }
}

/// A validator-like challenge: a long system prompt every challenge repeats, then a question.
/// Greedy, so that the answers compare.
fn challenge(question: &str) -> GenerationRequest {
    let system = "You are a helpful assistant. Answer briefly and precisely, in plain English. ".repeat(20);
    let mut req = GenerationRequest::one_turn(question, 24, Instant::now() + Duration::from_secs(60));
    req.messages.insert(0, ChatMessage::new("system", &system));
    req.temperature = 0.0;
    req
}

/// Runs the engine until every admitted request is done; answers by tag.
fn drain(engine: &mut EmbeddedEngine<'_, usize>, answers: &mut Vec<(usize, Generation)>) {
    while engine.active() > 0 {
        for (tag, result) in engine.step() {
            answers.push((tag, result.expect("generation succeeds")));
        }
    }
}

fn answer(answers: &[(usize, Generation)], tag: usize) -> &Generation {
    &answers.iter().find(|(t, _)| *t == tag).expect("answered").1
}

#[test]
fn a_challenge_repeating_a_cached_system_prompt_prefills_only_its_question_and_answers_the_same() {
    let (cached, plain) = (spec(true, 2), spec(false, 2));
    let model = load_model(&cached).unwrap();

    // Reference: the second challenge alone, fully prefilled.
    let mut engine = EmbeddedEngine::new(&model, &plain).unwrap();
    let mut reference = Vec::new();
    engine.admit(challenge("What is the capital of France?"), 2).unwrap();
    drain(&mut engine, &mut reference);
    assert_eq!(engine.stats().reused_prompt_tokens, 0);
    drop(engine);

    let mut engine = EmbeddedEngine::new(&model, &cached).unwrap();
    let mut answers = Vec::new();
    engine.admit(challenge("Name three primary colours."), 1).unwrap();
    drain(&mut engine, &mut answers);
    let first = engine.stats();
    assert_eq!(first.reused_prompt_tokens, 0, "nothing was cached yet");
    engine.admit(challenge("What is the capital of France?"), 2).unwrap();
    drain(&mut engine, &mut answers);
    let second = engine.stats().since(&first);

    let (with_reuse, without) = (answer(&answers, 2), answer(&reference, 2));
    assert_eq!(with_reuse.text, without.text, "reused KV gives the same greedy answer");
    assert_eq!(with_reuse.completion_tokens, without.completion_tokens);
    // The accounting still counts the whole prompt; only its unshared tail was prefilled.
    assert_eq!(with_reuse.prompt_tokens, without.prompt_tokens);
    assert!(second.reused_prompt_tokens > 200, "the system prompt was reused: {second:?}");
    assert_eq!(second.reused_prompt_tokens + second.prompt_tokens, u64::from(with_reuse.prompt_tokens));
}

#[test]
fn a_challenge_admitted_while_another_is_generating_shares_its_prefix_and_answers_the_same() {
    let (cached, plain) = (spec(true, 2), spec(false, 2));
    let model = load_model(&cached).unwrap();

    let mut engine = EmbeddedEngine::new(&model, &plain).unwrap();
    let mut reference = Vec::new();
    engine.admit(challenge("What is the capital of France?"), 2).unwrap();
    drain(&mut engine, &mut reference);
    drop(engine);

    let mut engine = EmbeddedEngine::new(&model, &cached).unwrap();
    let mut answers = Vec::new();
    engine.admit(challenge("Name three primary colours."), 1).unwrap();
    // Prefill the first and let it generate a few tokens: its KV is live when the second arrives.
    for _ in 0..4 {
        assert!(engine.step().is_empty());
    }
    engine.admit(challenge("What is the capital of France?"), 2).unwrap();
    assert!(engine.stats().reused_prompt_tokens > 200, "the live sequence's prefix was shared");
    drain(&mut engine, &mut answers);
    assert_eq!(answer(&answers, 2).text, answer(&reference, 2).text);
    assert_eq!(answers.len(), 2);
}

#[test]
fn challenges_admitted_together_prefill_their_shared_system_prompt_once_and_answer_the_same() {
    let (cached, plain) = (spec(true, 3), spec(false, 3));
    let model = load_model(&cached).unwrap();
    let questions = ["Name three primary colours.", "What is the capital of France?", "Count to five."];

    let mut engine = EmbeddedEngine::new(&model, &plain).unwrap();
    let mut reference = Vec::new();
    for (tag, q) in questions.iter().enumerate() {
        engine.admit(challenge(q), tag).unwrap();
    }
    drain(&mut engine, &mut reference);
    let full = engine.stats();
    drop(engine);

    // A burst: all three arrive before any step. The first prefills the system prompt; the other
    // two wait one step for it and share its cells instead of prefilling it in parallel.
    let mut engine = EmbeddedEngine::new(&model, &cached).unwrap();
    let mut answers = Vec::new();
    for (tag, q) in questions.iter().enumerate() {
        engine.admit(challenge(q), tag).unwrap();
    }
    assert_eq!(engine.stats().reused_prompt_tokens, 0, "nothing is cached at admission");
    drain(&mut engine, &mut answers);
    let shared = engine.stats();
    for tag in 0..questions.len() {
        assert_eq!(answer(&answers, tag).text, answer(&reference, tag).text, "challenge {tag}");
    }
    assert!(shared.reused_prompt_tokens > 2 * 200, "both later challenges shared the system prompt: {shared:?}");
    assert_eq!(shared.prompt_tokens + shared.reused_prompt_tokens, full.prompt_tokens);
}

/// Sampling a step's sequences in parallel (the GPU default) draws each sequence's token from its
/// own logits: with greedy sampling, four sequences decoded together answer exactly as they do
/// when sampled one after another.
#[test]
fn sequences_sampled_in_parallel_answer_as_when_sampled_in_order() {
    let plain = spec(false, 4);
    let model = load_model(&plain).unwrap();
    let questions =
        ["What is the capital of France?", "Name three primary colours.", "Count to five.", "What is two plus two?"];
    let run = |parallel: bool| {
        let mut engine = EmbeddedEngine::new(&model, &plain).unwrap();
        engine.set_parallel_sampling(parallel);
        for (tag, q) in questions.iter().enumerate() {
            engine.admit(challenge(q), tag).unwrap();
        }
        let mut answers = Vec::new();
        drain(&mut engine, &mut answers);
        answers.sort_by_key(|(tag, _)| *tag);
        answers.into_iter().map(|(_, g)| (g.text, g.completion_tokens)).collect::<Vec<_>>()
    };
    let (in_order, parallel) = (run(false), run(true));
    assert_eq!(in_order.len(), 4);
    assert_eq!(parallel, in_order);
}
