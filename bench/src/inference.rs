//! `inference`: one challenge at a time through the miner against a plain llama.cpp loop on the
//! same GGUF and prompt, interleaved run by run; then the first-token time of a challenge whose
//! long system prompt the engine has cached.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::Context;
use llama_cpp_2::context::params::LlamaContextParams;
use loosh_actors::front_door::FrontDoor;
use loosh_actors::front_door::GenerationRequest;
use loosh_actors::inference::chat_template::ChatTemplate;
use loosh_actors::inference::embedded::StepStats;
use loosh_actors::protocol::messages::ChatMessage;
use loosh_actors::settings::Hotkey;
use loosh_miner::client::validator::{challenge_body, ValidatorClient};

use crate::miner::{bench_config_with, start, step_stats, stop};
use crate::reference::{self, DirectSampler};
use crate::workers::EngineBench;

pub(crate) async fn inference(
    engine: EngineBench,
    parallel: u32,
    runs: usize,
    max_tokens: u32,
    sampler: DirectSampler,
    prompt: String,
) -> anyhow::Result<()> {
    let workers = serde_json::to_string(&[engine.device.worker_json(
        "w0",
        &engine.model,
        engine.threads,
        parallel,
        engine.prefix_cache,
    )])?;
    let cfg = bench_config_with(&engine.model, engine.threads, engine.inflight, &[("WORKERS", workers.as_str())])?;
    let node = start(&cfg).await?;
    let door = &node.door;
    let url = format!("http://{}", node.addr);

    // The direct reference lives on its own thread, like the worker's engine.
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = engine.device.spec(&engine.model, engine.threads);
    let direct = std::thread::spawn(move || -> anyhow::Result<()> {
        let model = reference::load(&spec)?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(2048))
            .with_n_batch(512)
            .with_n_ubatch(512)
            .with_n_threads(spec.threads)
            .with_n_threads_batch(spec.threads);
        let backend = loosh_actors::inference::embedded::backend()?;
        let mut ctx = model.new_context(backend, params)?;
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let source = model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
            .unwrap_or_else(|| loosh_actors::inference::chat_template::CHATML_TEMPLATE.into());
        let template = ChatTemplate::new(&source, &piece(vocab.bos()), &piece(vocab.eos()))?;
        while let Ok(Some(prompt)) = rx.recv() {
            let rendered = template.render(&[ChatMessage::new("user", &prompt)], None)?;
            let _ = res_tx.send(reference::generate(&model, &mut ctx, &rendered, max_tokens, sampler));
        }
        Ok(())
    });

    let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
    client.handshake().await?;
    let (mut d_tps, mut m_tps, mut d_ttft, mut g_ttft) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!(
        "inference bench: {runs} runs x {max_tokens} tokens on {}, {} thread(s), n_parallel {parallel}, direct sampling {sampler:?}, miner sampling top_p 0.95 temperature 0.7, model {}",
        engine.device,
        engine.threads,
        engine.model.display()
    );
    let mut before = StepStats::default();
    for run in 0..=runs {
        // A prompt of its own per run, so that the miner's prefix cache does not skip its prefill
        // (only the chat template's fixed start is shared, as between real challenges).
        let prompt = format!("Run {run}. {prompt}");
        tx.send(Some(prompt.clone()))?;
        let body = challenge_body(&prompt, max_tokens, 0.7);
        let (ttft, n, total) = res_rx.recv().await.context("direct thread ended")??;
        // Through the miner: full HTTP + crypto round trip.
        let t = Instant::now();
        let (reply, _) = client.challenge_once(&body).await?;
        let m_total = t.elapsed();
        // Through the front door without the protocol, for first-token latency (same process, so the instants compare).
        let submitted = Instant::now();
        let graph_prompt = format!("Graph {run}. {prompt}");
        let g = door
            .generate(GenerationRequest::one_turn(&graph_prompt, 1, Instant::now() + Duration::from_secs(50)))
            .await?;
        let g_first = g.first_token_at.map(|f| f.duration_since(submitted)).unwrap_or_default();
        if run == 0 {
            before = step_stats(door, "w0").await;
            continue; // warm-up
        }
        d_tps.push(n as f64 / total.as_secs_f64());
        m_tps.push(reply.usage.completion_tokens as f64 / m_total.as_secs_f64());
        d_ttft.push(ttft.as_secs_f64() * 1e3);
        g_ttft.push(g_first.as_secs_f64() * 1e3);
        println!(
            "run {run}: direct {n} tok in {:.0} ms ({:.1} tok/s, ttft {:.1} ms) | miner {} tok in {:.0} ms ({:.1} tok/s), front-door ttft {:.1} ms",
            total.as_secs_f64() * 1e3,
            d_tps.last().unwrap(),
            d_ttft.last().unwrap(),
            reply.usage.completion_tokens,
            m_total.as_secs_f64() * 1e3,
            m_tps.last().unwrap(),
            g_ttft.last().unwrap()
        );
    }
    tx.send(None)?;
    let _ = direct.join();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (dt, mt, df, gf) = (med(&mut d_tps), med(&mut m_tps), med(&mut d_ttft), med(&mut g_ttft));
    println!("median: direct {dt:.1} tok/s, miner {mt:.1} tok/s (ratio {:.3}); ttft direct {df:.1} ms, via the front door {gf:.1} ms ({:+.1} ms)", mt / dt, gf - df);
    println!("miner steps: {}", step_stats(door, "w0").await.since(&before).summary());
    prefix_reuse(door).await?;
    stop(node).await;
    Ok(())
}

/// First-token time of two challenges sharing a ~2,000-token system prompt: the second finds the
/// prefix in the KV cache and prefills only its own question.
async fn prefix_reuse(door: &FrontDoor) -> anyhow::Result<()> {
    let system = "You are a careful assistant who answers questions about lighthouses, ships and the sea. ".repeat(110);
    let mut ttft = Vec::new();
    for question in ["Who keeps the lighthouse?", "What does the keeper find in the bottle?"] {
        let mut req = GenerationRequest::one_turn(question, 1, Instant::now() + Duration::from_secs(50));
        req.messages.insert(0, ChatMessage::new("system", &system));
        let submitted = Instant::now();
        let g = door.generate(req).await?;
        let first = g.first_token_at.map(|f| f.duration_since(submitted)).unwrap_or_default();
        ttft.push((first.as_secs_f64() * 1e3, g.prompt_tokens));
    }
    println!(
        "prefix reuse: {}-token prompt, first token {:.1} ms uncached; {}-token prompt sharing its system prompt, first token {:.1} ms ({:.1}x faster)",
        ttft[0].1,
        ttft[0].0,
        ttft[1].1,
        ttft[1].0,
        ttft[0].0 / ttft[1].0.max(1e-3)
    );
    Ok(())
}
