//! Integration tests that spawn the real actor graph with real llama.cpp workers on the tiny model
//! (and SmolLM2 where the text must make sense).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use loosh_actors::inference::request::{BackendError, FinishReason};
use loosh_actors::scheduler::ScheduleError;
use loosh_actors::workers::supervisor::WorkerPhase;
use loosh_actors::workers::worker::WorkerMsg;

const LOAD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_asking_far_more_tokens_than_the_deadline_allows_returns_in_time_cut_at_length() {
    let model = tiny_model();
    let g = graph(vec![cpu_worker("cpu0", model, 8192)], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;

    // Greedy: the random-weight model's draws could otherwise hit an end-of-generation token
    // before the deadline (a few in 49k, over thousands of tokens), and the cut under test is the
    // deadline's.
    let mut req = request("Tell me everything.", 12_288, Duration::from_millis(1500));
    req.temperature = 0.0;
    let deadline = req.deadline;
    let gen = g.graph.generate(req).await.expect("an answer, not an error");
    assert_eq!(gen.finish_reason, FinishReason::Length);
    assert!(gen.cut_by_deadline, "the deadline, not max_tokens, ended it");
    assert!(gen.completion_tokens > 0);
    // The contract under test: the answer is in hand by the deadline (one token of slack).
    assert!(
        gen.finished_at <= deadline + Duration::from_millis(250),
        "finished {:?} after the deadline",
        gen.finished_at - deadline
    );
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_is_clamped_to_the_context_left_after_the_prompt() {
    let model = tiny_model();
    // llama.cpp pads the context to a multiple of 256, so ask for exactly 256.
    let g = graph(vec![cpu_worker("cpu0", model, 256)], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let gen = g.graph.generate(request("Hello there", 100_000, Duration::from_secs(50))).await.unwrap();
    assert!(gen.prompt_tokens + gen.completion_tokens <= 256, "{} + {}", gen.prompt_tokens, gen.completion_tokens);
    assert!(!gen.cut_by_deadline);
    if gen.finish_reason == FinishReason::Length {
        assert_eq!(gen.prompt_tokens + gen.completion_tokens, 256);
    }
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_is_refused_with_a_clear_error() {
    let model = tiny_model();
    let g = graph(vec![cpu_worker("cpu0", model, 256)], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let long = "word ".repeat(600);
    match g.graph.generate(request(&long, 8, Duration::from_secs(50))).await {
        Err(ScheduleError::Backend(BackendError::PromptTooLong { prompt_tokens, n_ctx })) => {
            assert!(prompt_tokens > 256);
            assert_eq!(n_ctx, 256);
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    // The worker is still fine.
    assert!(g.graph.generate(request("hi", 4, Duration::from_secs(50))).await.is_ok());
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_challenges_spread_over_two_workers_and_all_complete() {
    let model = tiny_model();
    let g = graph(vec![cpu_worker("cpu0", model.clone(), 1024), cpu_worker("cpu1", model, 1024)], 16, fast_restarts(3))
        .await;
    wait_for("both workers to load", LOAD, || async { ready_workers(&g).await == 2 }).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            g.graph.generate(request(&format!("question {i}"), 16, Duration::from_secs(50))).await
        }));
    }
    for t in tasks {
        let gen = t.await.unwrap().expect("every challenge is answered");
        assert!(gen.completion_tokens >= 1 && gen.completion_tokens <= 16);
    }
    let status = g.graph.status().await.unwrap();
    assert_eq!(status.in_flight, 0, "every slot was released");
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_miner_refuses_at_once_with_a_retry_hint() {
    let model = tiny_model();
    let g = graph(vec![cpu_worker("cpu0", model, 8192)], 1, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;

    let busy = g.clone();
    let long = tokio::spawn(async move { busy.graph.generate(request("long", 12_288, Duration::from_secs(3))).await });
    wait_for("the first challenge to be admitted", LOAD, || async { g.graph.status().await.unwrap().in_flight == 1 })
        .await;
    // Full, yet still available: a refused challenge costs nothing, `false` costs selection.
    let status = g.graph.status().await.unwrap();
    assert!(status.at_capacity());
    assert_eq!(status.availability(), Ok(()));
    match g.graph.generate(request("second", 4, Duration::from_secs(50))).await {
        Err(ScheduleError::Busy { in_flight: 1, retry_after_secs }) => assert!((1..=30).contains(&retry_after_secs)),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(long.await.unwrap().is_ok());
    assert_eq!(g.graph.status().await.unwrap().availability(), Ok(()));
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_worker_is_restarted_while_its_sibling_keeps_answering() {
    let model = tiny_model();
    let g =
        graph(vec![cpu_worker("cpu0", model.clone(), 512), cpu_worker("cpu1", model, 512)], 8, fast_restarts(3)).await;
    wait_for("both workers to load", LOAD, || async { ready_workers(&g).await == 2 }).await;

    let victim = g.graph.worker_ref("cpu0").await.expect("cpu0 is running");
    victim.cast(WorkerMsg::CrashForTest).unwrap();
    wait_for("cpu0 to be restarting", LOAD, || async {
        g.workers().await.iter().any(|w| w.name == "cpu0" && w.restarts == 1)
    })
    .await;
    // Meanwhile the sibling answers.
    assert!(g.graph.generate(request("still there?", 4, Duration::from_secs(50))).await.is_ok());
    wait_for("cpu0 to be back", LOAD, || async {
        g.workers().await.iter().all(|w| w.phase == WorkerPhase::Ready) && ready_workers(&g).await == 2
    })
    .await;
    let fresh = g.graph.worker_ref("cpu0").await.unwrap();
    assert_ne!(fresh.get_id(), victim.get_id(), "a new actor took its place");
    let metrics = g.metrics().render();
    assert!(metrics.contains("loosh_worker_restarts_total{worker=\"cpu0\"} 1"), "{metrics}");
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_intensity_limit_stops_a_crash_loop_and_availability_turns_false() {
    let model = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.gguf");
    std::fs::copy(&model, &copy).unwrap();
    let g = graph(vec![cpu_worker("cpu0", copy.clone(), 256)], 4, fast_restarts(2)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    assert_eq!(g.graph.status().await.unwrap().availability(), Ok(()));

    // The model file vanishes, then the worker crashes: every restart fails to load it.
    std::fs::remove_file(&copy).unwrap();
    g.graph.worker_ref("cpu0").await.unwrap().cast(WorkerMsg::CrashForTest).unwrap();
    wait_for("cpu0 to give up", LOAD, || async {
        g.workers().await.iter().any(|w| matches!(&w.phase, WorkerPhase::Down { .. }))
    })
    .await;
    let workers = g.workers().await;
    let WorkerPhase::Down { reason } = &workers[0].phase else { unreachable!() };
    assert!(reason.contains("does not exist"), "the reason names the problem: {reason}");
    assert_eq!(workers[0].restarts, 2, "stopped at the intensity limit");
    assert_eq!(g.graph.status().await.unwrap().availability(), Err("no backend worker is ready"));
    assert!(matches!(
        g.graph.generate(request("anyone?", 4, Duration::from_secs(5))).await,
        Err(ScheduleError::NoWorker)
    ));
    assert!(g.metrics().render().contains("loosh_worker_down{worker=\"cpu0\"} 1"));
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_a_factual_question_sensibly() {
    let g = graph(vec![cpu_worker("cpu0", smollm2_model(), 2048)], 4, fast_restarts(3)).await;
    wait_for("SmolLM2 to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let mut req = request("What is the capital of France? Answer in one short sentence.", 48, Duration::from_secs(50));
    req.temperature = 0.0; // greedy, so the check is about the pipeline, not luck
    let started = Instant::now();
    let gen = g.graph.generate(req).await.unwrap();
    assert!(gen.text.to_lowercase().contains("paris"), "answer: {:?}", gen.text);
    assert_eq!(gen.finish_reason, FinishReason::Stop, "the model ended its turn: {:?}", gen.text);
    assert!(gen.first_token_at.unwrap() >= started);
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_generates_several_challenges_at_once_by_continuous_batching() {
    let model = tiny_model();
    let g = graph(vec![embedded_worker("cpu0", model, 512, 4)], 8, fast_restarts(1)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let g = g.clone();
        // Different lengths: short ones finish and leave while long ones keep generating.
        let n = 16 + 48 * i;
        tasks.push(tokio::spawn(async move {
            g.graph.generate(request(&format!("story {i}"), n, Duration::from_secs(50))).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    let worker = g.graph.worker_ref("cpu0").await.unwrap();
    let snap = ractor::call_t!(worker, WorkerMsg::Snapshot, 1000).unwrap();
    assert_eq!(snap.served, 4);
    assert_eq!(snap.n_parallel, 4);
    assert!(snap.peak_active >= 2, "sequences were generated together: {snap:?}");
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_workers_step_time_by_phase_and_its_tokens() {
    let model = tiny_model();
    let g = graph(vec![embedded_worker("cpu0", model, 512, 2)], 4, fast_restarts(1)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let gen = g.graph.generate(request("Say something.", 12, Duration::from_secs(50))).await.unwrap();
    let worker = g.graph.worker_ref("cpu0").await.unwrap();
    let snap = ractor::call_t!(worker, WorkerMsg::Snapshot, 1000).unwrap();
    assert_eq!(snap.steps.tokens, u64::from(gen.completion_tokens));
    assert!(snap.steps.decode > Duration::ZERO && snap.steps.sampling > Duration::ZERO, "{snap:?}");
    let text = g.metrics().render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    for phase in ["decode", "sampling", "rest"] {
        assert!(value(&format!("loosh_engine_step_seconds_total{{phase=\"{phase}\",worker=\"cpu0\"}}")) > 0.0);
    }
    assert_eq!(value("loosh_engine_tokens_total{worker=\"cpu0\"}"), f64::from(gen.completion_tokens));
    assert!(value("loosh_engine_steps_total{worker=\"cpu0\"}") >= f64::from(gen.completion_tokens));
    assert!(text.contains("loosh_engine_tokens_per_second{worker=\"cpu0\"}"));
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_spreads_challenges_over_workers() {
    let model = tiny_model();
    let workers = (0..3).map(|i| cpu_worker(&format!("cpu{i}"), model.clone(), 512)).collect();
    let g = graph(workers, 12, fast_restarts(1)).await;
    wait_for("three workers to load", LOAD, || async { ready_workers(&g).await == 3 }).await;
    let mut tasks = Vec::new();
    for i in 0..9 {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            g.graph.generate(request(&format!("q{i}"), 24, Duration::from_secs(50))).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
    for name in ["cpu0", "cpu1", "cpu2"] {
        let w = g.graph.worker_ref(name).await.unwrap();
        let snap = ractor::call_t!(w, WorkerMsg::Snapshot, 1000).unwrap();
        assert!(snap.served >= 1, "{name} got no work: {snap:?}");
    }
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_on_a_worker_that_dies_is_re_dispatched_to_a_sibling() {
    let model = tiny_model();
    let g = graph(vec![cpu_worker("cpu0", model.clone(), 8192), cpu_worker("cpu1", model, 8192)], 8, fast_restarts(3))
        .await;
    wait_for("both workers to load", LOAD, || async { ready_workers(&g).await == 2 }).await;
    let busy = g.clone();
    let long = tokio::spawn(async move { busy.graph.generate(request("long", 2000, Duration::from_secs(30))).await });
    // Find the worker that took it, and kill that one mid-generation.
    let victim = Arc::new(std::sync::Mutex::new(None));
    wait_for("the challenge to start generating", LOAD, || {
        let (g, victim) = (g.clone(), victim.clone());
        async move {
            for name in ["cpu0", "cpu1"] {
                if let Some(w) = g.graph.worker_ref(name).await {
                    if ractor::call_t!(w, WorkerMsg::Snapshot, 1000).is_ok_and(|s| s.active == 1) {
                        *victim.lock().unwrap() = Some(w);
                        return true;
                    }
                }
            }
            false
        }
    })
    .await;
    let victim = victim.lock().unwrap().take();
    victim.unwrap().cast(WorkerMsg::CrashForTest).unwrap();
    let gen = long.await.unwrap().expect("the sibling answered in time");
    assert!(gen.completion_tokens > 0);
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_restarts_a_crashed_worker_supervisor_and_its_workers() {
    let model = tiny_model();
    let g = graph(vec![cpu_worker("cpu0", model, 512)], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let first = g.graph.supervisor.get();
    first.cast(loosh_actors::workers::supervisor::SupervisorMsg::CrashForTest).unwrap();
    wait_for("a new supervisor", LOAD, || async { g.graph.supervisor.get().get_id() != first.get_id() }).await;
    wait_for("its worker to be ready", LOAD, || async {
        g.workers().await.iter().all(|w| w.phase == WorkerPhase::Ready) && ready_workers(&g).await == 1
    })
    .await;
    assert!(g.graph.generate(request("back?", 4, Duration::from_secs(30))).await.is_ok());
    g.stop();
}

/// The watchdog: an engine whose step stops making progress while a challenge is in flight (a
/// hung decode, emulated by the `StallForTest` hook) fails its worker, the supervisor restarts the
/// worker with a fresh engine, and the challenge it held is run once more there (no sibling to
/// take it here) and answered. The limit is short here so the test is quick; nothing below is
/// timed: it waits for the restart, then for an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_engine_is_failed_by_the_watchdog_and_its_restart_answers() {
    use loosh_actors::settings::EngineSpec;
    let mut worker = cpu_worker("cpu0", tiny_model(), 512);
    let EngineSpec::Embedded(engine) = &mut worker.engine else { unreachable!() };
    engine.stall_after = Duration::from_secs(2);
    let g = graph(vec![worker], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;

    let victim = g.graph.worker_ref("cpu0").await.expect("cpu0 is running");
    victim.cast(WorkerMsg::StallForTest).unwrap();
    let stuck = g.clone();
    let held =
        tokio::spawn(async move { stuck.graph.generate(request("stall here", 4, Duration::from_secs(50))).await });
    wait_for("the watchdog to fail cpu0", LOAD, || async {
        g.workers().await.iter().any(|w| w.name == "cpu0" && w.restarts == 1)
    })
    .await;
    // Back for the supervisor (a new actor) and for the scheduler (told by the supervisor's
    // announcement, which reaches it a moment later).
    wait_for("cpu0 to be back", LOAD, || async {
        g.workers().await.iter().all(|w| w.phase == WorkerPhase::Ready) && ready_workers(&g).await == 1
    })
    .await;
    let fresh = g.graph.worker_ref("cpu0").await.unwrap();
    assert_ne!(fresh.get_id(), victim.get_id(), "a new actor took its place");
    assert!(
        g.graph.generate(request("awake?", 4, Duration::from_secs(50))).await.is_ok(),
        "the restarted worker answers"
    );
    let metrics = g.metrics().render();
    assert!(metrics.contains("loosh_engine_stalls_total{worker=\"cpu0\"} 1"), "{metrics}");
    assert!(metrics.contains("loosh_worker_restarts_total{worker=\"cpu0\"} 1"), "{metrics}");
    // The challenge the hung engine held waited for the restart and was answered by the fresh
    // engine, not left to its deadline.
    let answer = held.await.unwrap().expect("the held challenge is answered by the restarted worker");
    assert!(answer.completion_tokens > 0, "{answer:?}");
    let metrics = g.metrics().render();
    assert!(metrics.contains("loosh_challenge_reruns_total{on=\"restarted\"} 1"), "{metrics}");
    g.stop();
}

/// The scheduler crashes (the `CrashForTest` hook, as an unexpected state would): the root starts
/// a fresh one behind the same handle, the worker supervisor tells it which workers are up, a
/// closed admission stays closed, and challenges are answered again once admission reopens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_restarts_a_crashed_scheduler_which_learns_the_running_workers_again() {
    use loosh_actors::scheduler::SchedulerMsg;
    let g = graph(vec![cpu_worker("cpu0", tiny_model(), 512)], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    g.set_admission(false);
    let first = g.graph.scheduler.get();
    first.cast(SchedulerMsg::CrashForTest).unwrap();
    wait_for("a new scheduler that knows the worker", LOAD, || async {
        g.graph.scheduler.get().get_id() != first.get_id() && ready_workers(&g).await == 1
    })
    .await;
    let status = g.graph.status().await.unwrap();
    assert!(!status.admission_open, "admission closed before the crash stays closed: {status:?}");
    assert_eq!(g.status_now(), status, "/availability reads the new scheduler's status");
    assert!(matches!(
        g.graph.generate(request("closed?", 4, Duration::from_secs(30))).await,
        Err(ScheduleError::Closed)
    ));
    g.set_admission(true);
    assert!(g.graph.generate(request("back?", 4, Duration::from_secs(30))).await.is_ok());
    // The worker was not restarted: only the scheduler was.
    assert_eq!(g.workers().await[0].restarts, 0);
    g.stop();
}

/// A scheduler that crashes more often than the restart policy allows is given up on, and that
/// stops the node: `failed` resolves with what happened (the node then exits 70).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_crashing_past_the_restart_intensity_fails_the_graph() {
    use loosh_actors::graph::GraphFailure;
    use loosh_actors::scheduler::SchedulerMsg;
    let g = graph(vec![], 4, fast_restarts(1)).await;
    let first = g.graph.scheduler.get();
    first.cast(SchedulerMsg::CrashForTest).unwrap();
    wait_for("the scheduler's one restart", LOAD, || async { g.graph.scheduler.get().get_id() != first.get_id() })
        .await;
    g.graph.scheduler.get().cast(SchedulerMsg::CrashForTest).unwrap();
    let failure = tokio::time::timeout(LOAD, g.failed()).await.expect("the graph reports its failure");
    match failure {
        GraphFailure::GaveUp { child, max_restarts, last_error, .. } => {
            assert_eq!((child, max_restarts), ("scheduler", 1));
            assert!(last_error.contains("crash requested by a test"), "{last_error}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    g.stop();
}
