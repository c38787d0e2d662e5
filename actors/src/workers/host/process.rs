//! The worker's side of an engine child process: starts it, feeds it jobs, turns its frames back
//! into answers, counters and the watchdog's clock, and reports its death.
//!
//! Three threads per child: this host thread (it starts the child, reads its stdout, and reaps
//! it; the kernel's parent-death signal is tied to the thread that started the child, so this one
//! lives exactly as long as the child), a writer (jobs to the child's stdin) and a stderr reader
//! (the child's log, re-logged under the worker's name, last lines kept for the death report).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Instant;

use tokio::sync::oneshot;

use super::child::{CHILD_SUBCOMMAND, PARENT_PID_VAR};
use super::frame::{read_frame, write_frame, FromEngine, ToEngine, WireRequest};
use super::stats::{now_ms, EngineStats, LiveEngine, ReplyPort, StepMetrics};
use super::OnExit;
use crate::inference::embedded::{EmbeddedSpec, ModelInfo};
use crate::inference::request::{BackendError, GenerationRequest, JobControl};

/// Lines of the child's stderr kept for the report of its death.
const STDERR_TAIL: usize = 30;

/// What the worker's actor holds of its running child.
pub struct ChildEngine {
    to_child: mpsc::Sender<ToChild>,
    /// Job ids, assigned here so that a job's cancellation can name it.
    next_id: std::sync::atomic::AtomicU64,
    pid: u32,
    /// True once the child is reaped: its pid may then belong to another process. Held only to
    /// read or set it (and around the `kill` it guards), never while waiting for the child.
    reaped: Arc<Mutex<bool>>,
}

enum ToChild {
    Job {
        id: u64,
        request: GenerationRequest,
        reply: ReplyPort,
        /// Dropped when the job is answered: ends the task relaying its cancellation.
        answered: oneshot::Sender<()>,
    },
    Cancel(u64),
    #[cfg(feature = "test-hooks")]
    Hook(ToEngine),
}

impl ChildEngine {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Hands a job to the child; gives it back if the child's pipe is already gone. A task relays
    /// the job's cancellation (a hedge won elsewhere) to the child until the job is answered; the
    /// child's first token comes back through the job's control.
    pub(crate) fn submit(&self, request: GenerationRequest, reply: ReplyPort) -> Result<(), ReplyPort> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (answered, mut unanswered) = oneshot::channel();
        let control = request.control.clone();
        self.to_child.send(ToChild::Job { id, request, reply, answered }).map_err(|e| match e.0 {
            ToChild::Job { reply, .. } => reply,
            _ => unreachable!("a job was sent"),
        })?;
        let to_child = self.to_child.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = control.wait_cancelled() => {
                    let _ = to_child.send(ToChild::Cancel(id));
                }
                _ = &mut unanswered => {}
            }
        });
        Ok(())
    }

    /// SIGKILL: for a hung child (the watchdog); its death is then reported as any other.
    pub fn kill(&self) {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if !*reaped {
            // SAFETY: kill takes a pid and a signal number; the pid is still our unreaped child.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn hook(&self, frame: ToEngine) {
        let _ = self.to_child.send(ToChild::Hook(frame));
    }
}

/// Everything the host thread needs.
pub(crate) struct ChildArgs {
    pub name: String,
    pub spec: EmbeddedSpec,
    pub exe: PathBuf,
    /// Told when the child dies after its model loaded.
    pub on_exit: OnExit,
    pub stats: Arc<EngineStats>,
    pub metrics: StepMetrics,
    /// `loosh_engine_process_exits_total`, labelled by worker and reason.
    pub exits: prometheus::IntCounterVec,
}

/// Starts the child and waits until its model is loaded.
pub(crate) async fn start(args: ChildArgs) -> Result<(ChildEngine, ModelInfo), BackendError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let live = LiveEngine::new();
    thread::Builder::new()
        .name(format!("engine-{}", args.name))
        .spawn(move || host(live, args, ready_tx))
        .map_err(|e| BackendError::ModelLoad(format!("no thread for the engine process: {e}")))?;
    ready_rx.await.map_err(|_| BackendError::ModelLoad("the engine process's host thread ended".into()))?
}

/// A job the child holds: where its answer goes, its control (the first token is relayed to it),
/// and the sender whose drop ends its cancellation relay.
struct PendingJob {
    reply: ReplyPort,
    control: JobControl,
    _answered: oneshot::Sender<()>,
}

type Pending = Arc<Mutex<HashMap<u64, PendingJob>>>;

/// The host thread's body. `_live` is dropped last, once the child is reaped.
fn host(_live: LiveEngine, args: ChildArgs, ready: oneshot::Sender<Result<(ChildEngine, ModelInfo), BackendError>>) {
    let ChildArgs { name, mut spec, exe, on_exit, stats, mut metrics, exits } = args;
    let mut command = Command::new(&exe);
    command.arg(CHILD_SUBCOMMAND).env(PARENT_PID_VAR, std::process::id().to_string());
    if let Some(gpu) = spec.gpu_device {
        // The child sees only its own GPU, as device 0.
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        command.env("CUDA_VISIBLE_DEVICES", only_device(visible.as_deref(), gpu));
        spec.gpu_device = Some(0);
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(BackendError::ModelLoad(format!("cannot start {}: {e}", exe.display()))));
            return;
        }
    };
    let pid = child.id();
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three are piped")
    };
    tracing::info!(worker = %name, pid, exe = %exe.display(), "engine process started");

    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let log = {
        let (name, tail) = (name.clone(), tail.clone());
        thread::Builder::new().name(format!("engine-{name}-log")).spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                tracing::info!(worker = %name, "engine: {line}");
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        })
    };

    let pending: Pending = Arc::default();
    let (to_child, jobs) = mpsc::channel();
    let writer = {
        let (pending, stats) = (pending.clone(), stats.clone());
        let start = ToEngine::Start(spec);
        thread::Builder::new()
            .name(format!("engine-{name}-in"))
            .spawn(move || feed(BufWriter::new(stdin), start, jobs, &pending, &stats))
    };
    if log.is_err() || writer.is_err() {
        let _ = child.kill();
    }
    let reaped = Arc::new(Mutex::new(false));
    let engine = ChildEngine { to_child, next_id: Default::default(), pid, reaped: reaped.clone() };
    let mut ready = Some((ready, engine));

    let mut stdout = BufReader::new(stdout);
    let broken = loop {
        let frame = match read_frame::<FromEngine>(&mut stdout) {
            Ok(Some(frame)) => frame,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        match frame {
            FromEngine::Ready(result) => {
                if let Some((ready, engine)) = ready.take() {
                    let _ = ready.send(result.map(|info| (engine, info)));
                }
            }
            FromEngine::Stats { steps, active, busy } => {
                *stats.steps.lock().unwrap_or_else(|e| e.into_inner()) = steps;
                stats.active.store(active, Ordering::Relaxed);
                stats.peak_active.fetch_max(active, Ordering::Relaxed);
                metrics.publish(steps, !busy);
            }
            FromEngine::FirstToken { id } => {
                if let Some(job) = pending.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    job.control.first_token();
                }
            }
            FromEngine::Done { id, result } => {
                stats.served.fetch_add(1, Ordering::Relaxed);
                let job = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(job) = job {
                    let _ = job.reply.send(result.map(|g| g.into_generation(Instant::now())));
                }
            }
        }
        // The watchdog's clock: a frame is progress; no work in flight, no clock.
        let in_flight = !pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
        stats.step_started_ms.store(if in_flight { now_ms() } else { 0 }, Ordering::Relaxed);
    };
    if let Some(e) = &broken {
        tracing::error!(worker = %name, pid, error = %e, "unreadable frame from the engine process; killing it");
        let _ = child.kill();
    }
    // Wait for the exit without reaping (the pid stays ours meanwhile, so a `kill` cannot reach
    // another process), then reap under the lock: the lock is never held while the child runs,
    // so the watchdog's `kill` of a hung child is never blocked behind this wait.
    wait_exited(pid);
    let status = {
        let mut reaped = reaped.lock().unwrap_or_else(|e| e.into_inner());
        let status = child.wait();
        *reaped = true;
        status
    };
    // Whatever it held is answered now: the scheduler re-dispatches it when the deadline allows.
    for (_, job) in pending.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        let _ = job.reply.send(Err(BackendError::WorkerGone));
    }
    stats.active.store(0, Ordering::Relaxed);
    stats.step_started_ms.store(0, Ordering::Relaxed);
    if let Ok(log) = log {
        let _ = log.join();
    }
    let (label, reason) = match status {
        Ok(s) if s.success() && broken.is_none() => {
            tracing::info!(worker = %name, pid, "engine process exited");
            return;
        }
        Ok(s) => describe(s),
        Err(e) => ("unknown".to_string(), format!("ended, and could not be reaped ({e})")),
    };
    exits.with_label_values(&[&name, &label]).inc();
    let tail: Vec<String> = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
    tracing::error!(worker = %name, pid, %reason, stderr = %tail.join("\n"), "engine process died");
    let last = tail.iter().rev().take(3).rev().cloned().collect::<Vec<_>>().join(" | ");
    let reason = if last.is_empty() {
        format!("engine process {reason}")
    } else {
        format!("engine process {reason}; its last words: {last}")
    };
    match ready.take() {
        Some((ready, _)) => {
            let _ = ready.send(Err(BackendError::ModelLoad(reason)));
        }
        None => {
            on_exit(reason);
        }
    }
}

/// Blocks until child `pid` has exited, leaving it unreaped (`WNOWAIT`): a zombie whose pid no
/// other process can take until it is reaped. Returns at once if it cannot be waited for (it is
/// then reaped, or fails to be, by the caller's `wait`).
fn wait_exited(pid: u32) {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: waitid writes only into `info`, which lives across the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// The writer thread: the Start frame, then each job, until the worker drops its sender (it
/// stopped: closing stdin lets the child finish its work and exit) or the child's pipe breaks.
fn feed(
    mut stdin: BufWriter<std::process::ChildStdin>,
    start: ToEngine,
    jobs: mpsc::Receiver<ToChild>,
    pending: &Pending,
    stats: &EngineStats,
) {
    if write_frame(&mut stdin, &start).and_then(|()| stdin.flush()).is_err() {
        return;
    }
    while let Ok(message) = jobs.recv() {
        let frame = match message {
            ToChild::Job { id, request, reply, answered } => {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.is_empty() {
                    stats.step_started_ms.store(now_ms(), Ordering::Relaxed);
                }
                pending.insert(id, PendingJob { reply, control: request.control.clone(), _answered: answered });
                ToEngine::Job { id, request: WireRequest::new(request, Instant::now()) }
            }
            ToChild::Cancel(id) => ToEngine::Cancel { id },
            #[cfg(feature = "test-hooks")]
            ToChild::Hook(frame) => frame,
        };
        if write_frame(&mut stdin, &frame).and_then(|()| stdin.flush()).is_err() {
            // The child is gone; the host thread answers what it held.
            return;
        }
    }
}

/// `CUDA_VISIBLE_DEVICES` for a child that must see only the node's GPU number `gpu`: when the
/// node itself sees a subset (`"2,3"`), its GPU 1 is the machine's 3, not 1.
fn only_device(node_sees: Option<&str>, gpu: usize) -> String {
    node_sees
        .map(str::trim)
        .filter(|list| !list.is_empty())
        .and_then(|list| list.split(',').nth(gpu))
        .map_or_else(|| gpu.to_string(), |d| d.trim().to_string())
}

/// The metric label (bounded: `exit N` or `signal N`) and the log's words for how a child ended.
fn describe(status: ExitStatus) -> (String, String) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (format!("exit {code}"), format!("exited with code {code}")),
        (None, Some(signal)) => {
            let what = match signal {
                libc::SIGABRT => " (SIGABRT: an abort, e.g. a CUDA error in llama.cpp)",
                libc::SIGKILL => " (SIGKILL: killed by hand, by the watchdog or by the OOM killer)",
                libc::SIGSEGV => " (SIGSEGV: a segmentation fault)",
                libc::SIGBUS => " (SIGBUS)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            (format!("signal {signal}"), format!("killed by signal {signal}{what}"))
        }
        (None, None) => ("unknown".into(), format!("ended ({status})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_sees_the_gpu_the_node_calls_n_even_when_the_node_sees_a_subset() {
        assert_eq!(only_device(None, 1), "1");
        assert_eq!(only_device(Some(""), 1), "1");
        assert_eq!(only_device(Some("2,3"), 1), "3");
        assert_eq!(only_device(Some("GPU-5f0c, GPU-77aa"), 1), "GPU-77aa");
    }

    #[test]
    fn a_death_is_labelled_by_exit_code_or_signal_number() {
        assert_eq!(describe(ExitStatus::from_raw(134 - 128)).0, "signal 6");
        assert!(describe(ExitStatus::from_raw(9)).1.contains("SIGKILL"));
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), ("exit 3".into(), "exited with code 3".into()));
    }
}
