//! `loosh-bench answering`: seven validators' mixed load (short challenges and the validator's own
//! 12,288-token ones) on two CPU workers with a short deadline, in the same run: slot admission
//! without hedging, time-aware admission with hedging and no wait cap, and the same with the
//! `ADMISSION_MAX_WAIT_MS` cap: the shares answered, refused and cut, p50/p99 time of the answered
//! challenges (what the validator scores), and how fast a refusal comes back. With `--features test-hooks`, a second
//! part slows one worker's first token and compares p50/p99 time to first token without and with
//! hedging.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use loosh_actors::settings::Hotkey;

use crate::miner::{bench_config_with, start, stop};
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};

pub struct AnsweringPlan {
    pub model: PathBuf,
    pub validators: usize,
    /// Challenges each validator sends, one after another.
    pub rounds: usize,
    pub deadline_ms: u64,
    /// Tokens of a short challenge.
    pub short_tokens: u32,
    /// Sequences each of the two workers generates at once.
    pub parallel: u32,
    /// The wait cap of the last mode (`ADMISSION_MAX_WAIT_MS`).
    pub wait_cap_ms: u64,
}

/// One challenge's fate, client side.
enum Fate {
    Answered { took: Duration, cut: bool },
    Refused { took: Duration },
    NoAnswer,
}

fn quantile(mut v: Vec<Duration>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

pub async fn answering(plan: AnsweringPlan) -> anyhow::Result<()> {
    println!(
        "answering bench: {} validators x {} challenges (short {} tokens / 12288 alternating), 2 CPU workers x {} sequences, deadline {} ms, model {}",
        plan.validators,
        plan.rounds,
        plan.short_tokens,
        plan.parallel,
        plan.deadline_ms,
        plan.model.display()
    );
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11}",
        "mode", "answered", "refused", "no-text", "cut", "answer p50", "answer p99", "refusal p50", "refusal p99"
    );
    let capped = format!("time-aware + hedging, wait cap {} ms", plan.wait_cap_ms);
    for (label, time_aware, hedging, wait_cap_ms) in [
        ("slot admission, no hedging", false, false, 0),
        ("time-aware + hedging, no wait cap", true, true, 0),
        (capped.as_str(), true, true, plan.wait_cap_ms),
    ] {
        let (fates, reasons) = mixed_load(&plan, time_aware, hedging, wait_cap_ms).await?;
        let n = fates.len() as f64;
        let share = |f: &dyn Fn(&Fate) -> bool| 100.0 * fates.iter().filter(|x| f(x)).count() as f64 / n;
        let answered: Vec<Duration> =
            fates.iter().filter_map(|f| if let Fate::Answered { took, .. } = f { Some(*took) } else { None }).collect();
        let refusals: Vec<Duration> =
            fates.iter().filter_map(|f| if let Fate::Refused { took } = f { Some(*took) } else { None }).collect();
        println!(
            "{:<40} {:>8.1}% {:>8.1}% {:>8.1}% {:>8.1}% {:>10.0} {:>10.0} {:>11.2} {:>11.2}",
            label,
            share(&|f| matches!(f, Fate::Answered { .. })),
            share(&|f| matches!(f, Fate::Refused { .. })),
            share(&|f| matches!(f, Fate::NoAnswer)),
            share(&|f| matches!(f, Fate::Answered { cut: true, .. })),
            quantile(answered.clone(), 0.5),
            quantile(answered, 0.99),
            quantile(refusals.clone(), 0.5),
            quantile(refusals, 0.99),
        );
        println!("{:<40} {reasons}", "");
    }
    println!("(cut: answered, but stopped by the deadline; no-text: 504/502 instead of an empty 200; times in ms, the validator's round trip)");
    #[cfg(feature = "test-hooks")]
    slowed_worker(&plan).await?;
    Ok(())
}

fn workers_json(plan: &AnsweringPlan) -> anyhow::Result<String> {
    let model = plan.model.to_str().ok_or_else(|| anyhow::anyhow!("model path is not UTF-8"))?;
    // Context enough that a 12,288-token challenge runs to the deadline, as on a real model.
    let worker = |name: &str| {
        serde_json::json!({"kind": "embedded", "name": name, "device": "cpu", "model": model,
            "n_ctx": 8192, "n_parallel": plan.parallel, "threads": 1})
    };
    Ok(serde_json::json!([worker("cpu0"), worker("cpu1")]).to_string())
}

async fn mixed_load(
    plan: &AnsweringPlan,
    time_aware: bool,
    hedging: bool,
    wait_cap_ms: u64,
) -> anyhow::Result<(Vec<Fate>, String)> {
    let workers = workers_json(plan)?;
    let deadline = plan.deadline_ms.to_string();
    let wait_cap = wait_cap_ms.to_string();
    let cfg = bench_config_with(
        &plan.model,
        1,
        10,
        &[
            ("WORKERS", workers.as_str()),
            ("CHALLENGE_DEADLINE_MS", deadline.as_str()),
            ("TIME_AWARE_ADMISSION", if time_aware { "true" } else { "false" }),
            ("HEDGING", if hedging { "true" } else { "false" }),
            ("ADMISSION_MAX_WAIT_MS", wait_cap.as_str()),
        ],
    )?;
    let node = start(&cfg).await?;
    // Kept past the stop: the refusal counters are read once the node has stopped.
    let door = node.door.clone();
    let url = format!("http://{}", node.addr);
    let mut clients = Vec::new();
    for _ in 0..plan.validators {
        let mut client = ValidatorClient::new(&url, Hotkey::ephemeral());
        client.handshake().await?;
        clients.push(client);
    }
    let mut tasks = Vec::new();
    for (v, mut client) in clients.into_iter().enumerate() {
        let (rounds, short) = (plan.rounds, plan.short_tokens);
        tasks.push(tokio::spawn(async move {
            let mut fates = Vec::new();
            for i in 0..rounds {
                let max_tokens = if (v + i) % 2 == 0 { 12_288 } else { short };
                let body =
                    challenge_body(&format!("Validator {v}, question {i}: tell me about the sea."), max_tokens, 0.7);
                let sent = Instant::now();
                let fate = match client.challenge(&body).await {
                    Ok((reply, _)) => Fate::Answered {
                        took: sent.elapsed(),
                        cut: reply.finish_reason == "length" && reply.usage.completion_tokens < max_tokens,
                    },
                    Err(ClientError::Status { status: 503 | 429, .. }) => Fate::Refused { took: sent.elapsed() },
                    Err(ClientError::Status { status: 502 | 504, .. }) => Fate::NoAnswer,
                    Err(e) => return Err(anyhow::anyhow!("validator {v}: {e}")),
                };
                fates.push(fate);
            }
            Ok::<_, anyhow::Error>(fates)
        }));
    }
    let mut fates = Vec::new();
    for t in tasks {
        fates.extend(t.await??);
    }
    stop(node).await;
    let refused = |reason: &str| door.metrics().admission_refusals.with_label_values(&[reason]).get();
    let reasons = format!(
        "refused at admission: {} full, {} too late, {} wait, {} slowdown",
        refused("full"),
        refused("too_late"),
        refused("wait"),
        refused("slowdown")
    );
    Ok((fates, reasons))
}

/// One worker slowed to its first token (test hook): time to first token of short challenges,
/// eight at a time (more than the fast worker's sequences, so that the slow one gets some),
/// without and with hedging.
#[cfg(feature = "test-hooks")]
async fn slowed_worker(plan: &AnsweringPlan) -> anyhow::Result<()> {
    use loosh_actors::front_door::FrontDoor;
    use loosh_actors::front_door::GenerationRequest;
    use loosh_actors::workers::worker::WorkerMsg;

    let slow = Duration::from_secs(3);
    println!(
        "\nslowed worker: cpu1's first token held back {} ms; {} rounds of 8 short challenges at once",
        slow.as_millis(),
        plan.rounds
    );
    println!("{:<34} {:>12} {:>12} {:>8} {:>10}", "mode", "TTFT p50 ms", "TTFT p99 ms", "hedges", "hedge won");
    for hedging in [false, true] {
        let workers = workers_json(plan)?;
        let cfg = bench_config_with(
            &plan.model,
            1,
            10,
            &[("WORKERS", workers.as_str()), ("HEDGING", if hedging { "true" } else { "false" })],
        )?;
        let node = start(&cfg).await?;
        let door = &node.door;
        let round = |door: FrontDoor| async move {
            let mut tasks = Vec::new();
            for i in 0..8 {
                let g = door.clone();
                tasks.push(tokio::spawn(async move {
                    let req = GenerationRequest::one_turn(
                        &format!("Question {i}: name a colour."),
                        16,
                        Instant::now() + Duration::from_secs(30),
                    );
                    let sent = Instant::now();
                    let gen = g.generate(req).await?;
                    Ok::<_, anyhow::Error>(gen.first_token_at.map(|t| t.saturating_duration_since(sent)))
                }));
            }
            let mut ttfts = Vec::new();
            for t in tasks {
                ttfts.extend(t.await??);
            }
            Ok::<_, anyhow::Error>(ttfts)
        };
        // Warm-up: both workers measured while alike.
        round(door.clone()).await?;
        round(door.clone()).await?;
        let worker = door.graph.worker_ref("cpu1").await.ok_or_else(|| anyhow::anyhow!("cpu1 is not up"))?;
        worker.cast(WorkerMsg::SlowFirstTokenForTest(slow))?;
        let mut ttfts = Vec::new();
        for _ in 0..plan.rounds {
            ttfts.extend(round(door.clone()).await?);
        }
        println!(
            "{:<34} {:>12.0} {:>12.0} {:>8} {:>10}",
            if hedging { "hedging" } else { "no hedging" },
            quantile(ttfts.clone(), 0.5),
            quantile(ttfts, 0.99),
            door.metrics().hedges.get(),
            door.metrics().hedge_wins.with_label_values(&["hedge"]).get(),
        );
        stop(node).await;
    }
    Ok(())
}
