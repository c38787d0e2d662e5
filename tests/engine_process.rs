//! Engines in child processes: a child that dies (an `abort()` as llama.cpp does on a CUDA error,
//! a SIGKILL as the OOM killer sends, a hang the watchdog ends) costs its worker only; the
//! challenges it held go to the sibling, or, with none free, wait for the supervisor to restart the
//! worker with a fresh child and run there; `/metrics` says why, and no child outlives the node,
//! even when the node is killed with -9. Two CPU workers on the tiny model stand in for two GPUs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use loosh_actors::front_door::FrontDoor;
use loosh_actors::inference::request::BackendError;
use loosh_actors::scheduler::ScheduleError;
use loosh_actors::supervision::RestartPolicy;
use loosh_actors::workers::supervisor::WorkerPhase;
use loosh_actors::workers::worker::{WorkerMsg, WorkerSnapshot};
use ractor::ActorRef;

const LOAD: Duration = Duration::from_secs(60);

async fn snapshot(g: &FrontDoor, name: &str) -> Option<WorkerSnapshot> {
    let w = g.graph.worker_ref(name).await?;
    ractor::call_t!(w, WorkerMsg::Snapshot, 1000).ok()
}

async fn pid_of(g: &FrontDoor, name: &str) -> u32 {
    snapshot(g, name).await.and_then(|s| s.engine_pid).expect("the worker runs its engine in a child")
}

/// Two child-process workers, loaded; their engine pids.
async fn two_children(restart: RestartPolicy) -> (FrontDoor, [u32; 2]) {
    let model = tiny_model();
    let g = graph(vec![child_worker("cpu0", model.clone(), 8192), child_worker("cpu1", model, 8192)], 8, restart).await;
    wait_for("both workers to load", LOAD, || async { ready_workers(&g).await == 2 }).await;
    let pids = [pid_of(&g, "cpu0").await, pid_of(&g, "cpu1").await];
    assert_eq!(children_of(std::process::id()).len(), 2, "one engine process per worker");
    (g, pids)
}

/// A challenge that runs until its deadline: greedy, so that no chance end-of-generation token of
/// the random-weight model ends it before the engine under it dies.
fn long_request(deadline_in: Duration) -> loosh_actors::inference::request::GenerationRequest {
    let mut req = request("Tell me everything.", 6000, deadline_in);
    req.temperature = 0.0;
    req
}

/// Starts a long challenge and returns it with the worker (name, actor) generating it.
async fn long_challenge_in_flight(
    g: &FrontDoor,
) -> (tokio::task::JoinHandle<Result<loosh_actors::inference::request::Generation, ScheduleError>>, String) {
    let busy = g.clone();
    let long = tokio::spawn(async move { busy.graph.generate(long_request(Duration::from_secs(30))).await });
    let victim = Arc::new(std::sync::Mutex::new(None));
    wait_for("the challenge to start generating", LOAD, || {
        let (g, victim) = (g.clone(), victim.clone());
        async move {
            for name in ["cpu0", "cpu1"] {
                if snapshot(&g, name).await.is_some_and(|s| s.active == 1 && s.steps.tokens > 0) {
                    *victim.lock().unwrap() = Some(name.to_string());
                    return true;
                }
            }
            false
        }
    })
    .await;
    let name = victim.lock().unwrap().take().unwrap();
    (long, name)
}

/// The worker is back: a new child (not `old_pid`), ready, and it answers a challenge itself.
async fn back_and_answering(g: &FrontDoor, name: &str, old_pid: u32) -> u32 {
    wait_for("a new engine process in the dead one's place", LOAD, || async {
        snapshot(g, name).await.and_then(|s| s.engine_pid).is_some_and(|p| p != old_pid)
            && g.workers().await.iter().all(|w| w.phase == WorkerPhase::Ready)
            && ready_workers(g).await == 2
    })
    .await;
    let fresh: ActorRef<WorkerMsg> = g.graph.worker_ref(name).await.unwrap();
    let pid = pid_of(g, name).await;
    let answer = ractor::call!(fresh, |reply| WorkerMsg::Generate { request: request("back?", 4, LOAD), reply })
        .expect("the worker's mailbox answers");
    assert!(answer.is_ok_and(|g| g.completion_tokens > 0), "the restarted engine generates");
    pid
}

/// The metric line for this worker's engine deaths by `reason`, if any.
fn exits(g: &FrontDoor, worker: &str, reason: &str) -> Option<f64> {
    g.metrics().render().lines().find_map(|l| {
        let rest = l.strip_prefix("loosh_engine_process_exits_total{")?;
        let (labels, value) = rest.split_once("} ")?;
        (labels.contains(&format!("worker=\"{worker}\"")) && labels.contains(&format!("reason=\"{reason}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// Stops the graph and waits (bounded) until none of `pids` exists and we have no child left.
async fn stop_and_expect_no_child(g: FrontDoor, pids: &[u32]) {
    g.stop();
    wait_for("every engine process to exit and be reaped", LOAD, || async {
        pids.iter().all(|p| !process_exists(*p)) && children_of(std::process::id()).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_aborts_mid_generation_costs_one_worker_and_its_challenge_moves_to_the_sibling() {
    // A backoff long enough to read the worker's failure before it restarts.
    let slow = RestartPolicy {
        backoff_initial: Duration::from_secs(2),
        backoff_max: Duration::from_secs(2),
        ..fast_restarts(3)
    };
    let (g, pids) = two_children(slow).await;
    let (long, victim) = long_challenge_in_flight(&g).await;
    let victim_pid = pids[usize::from(victim == "cpu1")];
    g.graph.worker_ref(&victim).await.unwrap().cast(WorkerMsg::AbortEngineForTest).unwrap();

    // The failure names the signal and quotes the child's last stderr line.
    let reason = Arc::new(std::sync::Mutex::new(String::new()));
    wait_for("the worker to be restarting", LOAD, || {
        let (g, victim, reason) = (g.clone(), victim.clone(), reason.clone());
        async move {
            g.workers().await.into_iter().any(|w| match w.phase {
                WorkerPhase::Restarting { after_failure } if w.name == victim => {
                    *reason.lock().unwrap() = after_failure;
                    true
                }
                _ => false,
            })
        }
    })
    .await;
    let reason = reason.lock().unwrap().clone();
    assert!(reason.contains("killed by signal 6") && reason.contains("abort requested by a test"), "{reason}");

    let gen = long.await.unwrap().expect("the sibling answered the re-dispatched challenge");
    assert!(gen.completion_tokens > 0);
    wait_for("the abort to be counted", LOAD, || async { exits(&g, &victim, "signal 6") == Some(1.0) }).await;
    let fresh_pid = back_and_answering(&g, &victim, victim_pid).await;
    assert!(!process_exists(victim_pid), "the dead child was reaped");
    let metrics = g.metrics().render();
    assert!(metrics.contains(&format!("loosh_worker_restarts_total{{worker=\"{victim}\"}} 1")), "{metrics}");
    stop_and_expect_no_child(g, &[pids[0], pids[1], fresh_pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_with_sigkill_fails_its_challenge_cleanly_when_no_time_is_left_to_move_it() {
    let (g, pids) = two_children(fast_restarts(3)).await;
    let (long, victim) = long_challenge_in_flight(&g).await;
    let victim_pid = pids[usize::from(victim == "cpu1")];
    let sibling = if victim == "cpu0" { "cpu1" } else { "cpu0" };
    let status = std::process::Command::new("kill").args(["-KILL", &victim_pid.to_string()]).status().unwrap();
    assert!(status.success());

    // The 30 s deadline leaves room: the sibling takes the challenge over.
    assert!(long.await.unwrap().is_ok_and(|g| g.completion_tokens > 0), "re-dispatched and answered");
    // Meanwhile the sibling's own process was never touched.
    assert_eq!(pid_of(&g, sibling).await, pids[usize::from(sibling == "cpu1")]);
    wait_for("the kill to be counted", LOAD, || async { exits(&g, &victim, "signal 9") == Some(1.0) }).await;
    let workers = g.workers().await;
    let w = workers.iter().find(|w| w.name == victim).unwrap();
    assert_eq!(w.restarts, 1, "{w:?}");
    let fresh_pid = back_and_answering(&g, &victim, victim_pid).await;

    // A challenge with too little time left to move fails at once with WorkerGone: kill the
    // engine under a challenge whose deadline is closer than the scheduler's re-dispatch margin.
    let busy = g.clone();
    let short = tokio::spawn(async move { busy.graph.generate(long_request(Duration::from_secs(4))).await });
    let holder = Arc::new(std::sync::Mutex::new(None));
    wait_for("the short-deadline challenge to start", LOAD, || {
        let (g, holder) = (g.clone(), holder.clone());
        async move {
            for name in ["cpu0", "cpu1"] {
                if let Some(s) = snapshot(&g, name).await.filter(|s| s.active == 1 && s.steps.tokens > 0) {
                    *holder.lock().unwrap() = s.engine_pid;
                    return true;
                }
            }
            false
        }
    })
    .await;
    let holder_pid = holder.lock().unwrap().take().unwrap();
    std::process::Command::new("kill").args(["-KILL", &holder_pid.to_string()]).status().unwrap();
    match short.await.unwrap() {
        Err(ScheduleError::Backend(BackendError::WorkerGone)) => {}
        other => panic!("expected WorkerGone for a challenge that cannot be moved in time, got {other:?}"),
    }
    let mut now = [0u32; 2];
    for (i, name) in ["cpu0", "cpu1"].into_iter().enumerate() {
        wait_for("both workers back with live engines", LOAD, || async {
            snapshot(&g, name).await.and_then(|s| s.engine_pid).is_some_and(|p| p != holder_pid)
        })
        .await;
        now[i] = pid_of(&g, name).await;
    }
    stop_and_expect_no_child(g, &[pids[0], pids[1], fresh_pid, holder_pid, now[0], now[1]]).await;
}

/// The watchdog on a child: a hung engine process is killed (not merely abandoned, as a thread
/// must be), and a fresh child answers, the challenge the hung one held included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_process_is_killed_by_the_watchdog_and_replaced() {
    use loosh_actors::settings::EngineSpec;
    let mut worker = child_worker("cpu0", tiny_model(), 512);
    let EngineSpec::Embedded(engine) = &mut worker.engine else { unreachable!() };
    engine.stall_after = Duration::from_secs(2);
    let g = graph(vec![worker], 4, fast_restarts(3)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let pid = pid_of(&g, "cpu0").await;

    g.graph.worker_ref("cpu0").await.unwrap().cast(WorkerMsg::StallForTest).unwrap();
    let stuck = g.clone();
    let held =
        tokio::spawn(async move { stuck.graph.generate(request("stall here", 4, Duration::from_secs(50))).await });
    let answer = held.await.unwrap().expect("the held challenge is run once more on the fresh child");
    assert!(answer.completion_tokens > 0, "{answer:?}");
    wait_for("the hung child to be killed and reaped", LOAD, || async { !process_exists(pid) }).await;
    wait_for("cpu0 to be back", LOAD, || async { ready_workers(&g).await == 1 }).await;
    assert!(g.graph.generate(request("awake?", 4, Duration::from_secs(50))).await.is_ok(), "the fresh child answers");
    let metrics = g.metrics().render();
    assert!(metrics.contains("loosh_engine_stalls_total{worker=\"cpu0\"} 1"), "{metrics}");
    assert!(metrics.contains("loosh_challenge_reruns_total{on=\"restarted\"} 1"), "{metrics}");
    wait_for("the kill to be counted", LOAD, || async { exits(&g, "cpu0", "signal 9") == Some(1.0) }).await;
    let fresh = pid_of(&g, "cpu0").await;
    stop_and_expect_no_child(g, &[pid, fresh]).await;
}

/// The node itself: SIGTERM drains and stops its engine children and exits 0; `kill -9` of the
/// node takes its children with it (the kernel's parent-death signal).
#[test]
fn engine_children_never_outlive_the_node_whether_it_is_stopped_or_killed() {
    let model = tiny_model();
    let settings = [("ENGINE_PROCESS", "always"), ("LLAMA_PARALLEL", "1")];

    let mut node = MinerProcess::start(&model, true, &settings);
    let children = children_of(node.pid());
    assert_eq!(children.len(), 1, "one engine process: {children:?}");
    node.signal("TERM");
    assert!(node.wait_exit(LOAD).success(), "a clean exit after SIGTERM");
    wait_until("the engine process to be gone after SIGTERM", || !process_exists(children[0]));

    let mut node = MinerProcess::start(&model, true, &settings);
    let children = children_of(node.pid());
    assert_eq!(children.len(), 1, "one engine process: {children:?}");
    node.signal("KILL");
    node.wait_exit(LOAD);
    // Orphaned, it would be re-parented and live on; it is killed with its parent instead.
    wait_until("the engine process to die with the node", || !process_alive(children[0]));
}

/// Polls `check` (bounded) from a plain thread.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + LOAD;
    while !check() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The scheduler's and the operator's view of a child engine is the same as of a thread's: its
/// step counters are in the worker's snapshot and in `/metrics` by the time its answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_engines_step_counters_reach_the_snapshot_and_metrics_before_its_answer() {
    let mut worker = child_worker("cpu0", tiny_model(), 512);
    if let loosh_actors::settings::EngineSpec::Embedded(e) = &mut worker.engine {
        e.n_parallel = 2;
    }
    let g = graph(vec![worker], 4, fast_restarts(1)).await;
    wait_for("the worker to load", LOAD, || async { ready_workers(&g).await == 1 }).await;
    let gen = g.graph.generate(request("Say something.", 12, Duration::from_secs(50))).await.unwrap();
    let snap = snapshot(&g, "cpu0").await.unwrap();
    assert_eq!((snap.served, snap.n_parallel, snap.active), (1, 2, 0), "{snap:?}");
    assert_eq!(snap.steps.tokens, u64::from(gen.completion_tokens));
    assert!(snap.steps.decode > Duration::ZERO && snap.steps.sampling > Duration::ZERO, "{snap:?}");
    let text = g.metrics().render();
    assert!(
        text.contains(&format!("loosh_engine_tokens_total{{worker=\"cpu0\"}} {}", gen.completion_tokens)),
        "{text}"
    );
    assert!(gen.first_token_at.is_some_and(|f| f >= gen.started_at && f <= gen.finished_at), "{gen:?}");
    let pid = snap.engine_pid.unwrap();
    stop_and_expect_no_child(g, &[pid]).await;
}

/// Hedging reaches engines in children: a job's first token comes back over the pipe to its
/// control (the scheduler's race watches it), and cancelling the control (a hedge won elsewhere)
/// stops the job in the child and frees its sequence, as on a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_relays_its_first_token_and_stops_a_cancelled_job() {
    let (g, pids) = two_children(RestartPolicy::default()).await;
    let worker = g.graph.worker_ref("cpu0").await.expect("cpu0 is up");
    let request = long_request(Duration::from_secs(30));
    let control = request.control.clone();
    let answer = tokio::spawn(async move {
        ractor::rpc::call(&worker, |r| WorkerMsg::Generate { request, reply: r }, Some(LOAD)).await
    });
    tokio::time::timeout(LOAD, control.wait_first_token()).await.expect("the child's first token reaches the control");
    // The child's counters follow on its next stats frame.
    wait_for("the job to hold a sequence", LOAD, || async {
        snapshot(&g, "cpu0").await.is_some_and(|s| s.active == 1)
    })
    .await;

    control.cancel();
    let answer = tokio::time::timeout(LOAD, answer).await.expect("the cancelled job is answered").unwrap();
    match answer {
        Ok(ractor::rpc::CallResult::Success(Err(BackendError::Cancelled))) => {}
        other => panic!("a cancelled job ends as Cancelled, not {other:?}"),
    }
    wait_for("the child to free the sequence", LOAD, || async {
        snapshot(&g, "cpu0").await.is_some_and(|s| s.active == 0)
    })
    .await;
    assert_eq!(pid_of(&g, "cpu0").await, pids[0], "the same child, still serving");
    stop_and_expect_no_child(g, &pids).await;
}

/// Issue 33, through the binary as validators see it: the miner's only engine is SIGKILLed (as
/// the OOM killer does) under ten challenges. With no sibling to take them, each waits for the
/// worker's restart and is run once more on the fresh engine, from its prompt: all ten validators
/// get their 200, as if nothing had happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_challenges_on_an_engine_killed_under_them_are_all_answered_by_its_restart() {
    use loosh_actors::protocol::signature::Hotkey;
    use loosh_miner::client::validator::{challenge_body, ValidatorClient};

    let miner = MinerProcess::start(
        &tiny_model(),
        true,
        &[
            ("ENGINE_PROCESS", "always"),
            ("LLAMA_PARALLEL", "2"),
            ("CHALLENGE_DEADLINE_MS", "59000"),
            // Queued behind each other, not refused: the kill is under test, not admission.
            ("ADMISSION_MAX_WAIT_MS", "0"),
            ("HEDGING", "false"),
        ],
    );
    let engine = children_of(miner.pid());
    assert_eq!(engine.len(), 1, "one engine process: {engine:?}");
    let mut validators = Vec::new();
    for _ in 0..10 {
        let mut v = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
        v.handshake().await.expect("key exchange");
        validators.push(v);
    }
    // Greedy, so that no chance end-of-generation token of the random-weight model ends one early.
    let challenges: Vec<_> = validators
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let body = challenge_body(&format!("Tell me everything about the number {i}."), 300, 0.0);
            tokio::spawn(async move { v.challenge_once(&body).await })
        })
        .collect();
    wait_for("challenges to be in flight", LOAD, || async {
        miner.metric("loosh_challenges_in_flight").unwrap_or(0.0) >= 1.0
    })
    .await;
    let status = std::process::Command::new("kill").args(["-KILL", &engine[0].to_string()]).status().unwrap();
    assert!(status.success());

    for (i, challenge) in challenges.into_iter().enumerate() {
        match challenge.await.unwrap() {
            Ok((reply, _)) => assert!(reply.usage.completion_tokens > 0, "challenge {i}: {reply:?}"),
            Err(e) => panic!("challenge {i} was lost to the engine's death: {e:?}"),
        }
    }
    assert_eq!(miner.metric("loosh_worker_restarts_total{worker=\"cpu0\"}"), Some(1.0), "one restart");
    let reruns = miner.metric("loosh_challenge_reruns_total{on=\"restarted\"}").unwrap_or(0.0);
    assert!(reruns >= 1.0, "the challenges the dead engine held ran on its restart ({reruns})");
    assert_eq!(miner.metric("loosh_challenge_reruns_total{on=\"sibling\"}"), None, "there is no sibling");
    let now = children_of(miner.pid());
    assert!(now.len() == 1 && now[0] != engine[0], "a fresh engine process in the dead one's place: {now:?}");
}
