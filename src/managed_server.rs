//! Backend servers the miner starts and watches itself: an `openai` worker in `WORKERS` may carry
//! the `command` that serves it (`vllm serve MODEL --port 8101`, with `env` such as
//! `CUDA_VISIBLE_DEVICES=1`). Each runs in its own process group under a small supervisor task:
//! its output goes to the miner's log prefixed with the worker's name, an exit is followed by a
//! restart with backoff (at most [`MAX_RESTARTS`] in [`RESTART_WINDOW`], then it stays down and
//! the log says so), and the miner's shutdown stops it (SIGTERM to the group, SIGKILL after
//! [`STOP_GRACE`]). If the miner itself is killed, the kernel ends the server too
//! (`PR_SET_PDEATHSIG`), so no orphan keeps a GPU.
//!
//! The node waits for each server's `GET /v1/models` before it starts its workers: a model can
//! take many minutes to load, longer than a worker's own restart budget.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

/// Restarts allowed within [`RESTART_WINDOW`] before a server is left down.
pub const MAX_RESTARTS: usize = 10;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a stopping server gets after SIGTERM (vLLM frees GPU memory on the way out).
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// One server to run, from a `WORKERS` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    /// The worker it serves (the log prefix).
    pub worker: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The worker's `base_url` (with `/v1`); ready when `{base_url}/models` answers 200.
    pub base_url: String,
    pub ready_timeout: Duration,
}

/// The running servers; [`ManagedServers::stop`] ends them.
pub struct ManagedServers {
    servers: Vec<Running>,
}

struct Running {
    spec: ServerSpec,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ManagedServers {
    /// Starts every server (on the current tokio runtime); returns at once.
    pub fn start(specs: Vec<ServerSpec>) -> Self {
        let servers = specs
            .into_iter()
            .map(|spec| {
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(supervise(spec.clone(), stopped));
                Running { spec, stop, task }
            })
            .collect();
        Self { servers }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Waits until every server answers `GET /v1/models`, each within its `ready_timeout`; the
    /// workers whose server did not are named (they start anyway, and retry on their own).
    pub async fn wait_ready(&self) -> Vec<String> {
        let waits = self.servers.iter().map(|s| async move {
            let ready = wait_for_models(&s.spec.base_url, s.spec.ready_timeout).await;
            if ready {
                tracing::info!(worker = %s.spec.worker, url = %s.spec.base_url, "backend server ready");
            } else {
                tracing::error!(worker = %s.spec.worker, url = %s.spec.base_url, timeout_s = s.spec.ready_timeout.as_secs(), "backend server not ready in time; starting its worker anyway");
            }
            (!ready).then(|| s.spec.worker.clone())
        });
        let mut late = Vec::new();
        for w in waits {
            late.extend(w.await);
        }
        late
    }

    /// Stops every server: SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns when all are gone.
    pub async fn stop(self) {
        for s in &self.servers {
            let _ = s.stop.send(true);
        }
        for s in self.servers {
            let _ = s.task.await;
        }
    }
}

/// Polls `{base_url}/models` until it answers 200 or `timeout` passes.
async fn wait_for_models(base_url: &str, timeout: Duration) -> bool {
    let Ok(client) = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build() else {
        return false;
    };
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        // Polling a server that is loading a model: nothing to be notified by but its port.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Runs one server until told to stop, restarting it with backoff when it exits.
async fn supervise(spec: ServerSpec, mut stop: watch::Receiver<bool>) {
    let name = spec.worker.clone();
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let mut child = match spawn(&spec) {
            Ok(child) => child,
            Err(e) => {
                // The program only: its arguments may carry a key (`--api-key`).
                let program = spec.argv.first().map_or("", String::as_str);
                tracing::error!(worker = %name, error = %e, program, "backend server cannot start");
                return;
            }
        };
        let pid = child.id();
        tracing::info!(worker = %name, pid, "backend server started");
        let started = Instant::now();
        let status = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = status else {
            terminate(&name, pid, &mut child).await;
            return;
        };
        let how = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        // A server that ran a while before failing gets the short backoff again.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_FIRST;
        }
        let now = Instant::now();
        while recent.front().is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW) {
            recent.pop_front();
        }
        if recent.len() >= MAX_RESTARTS {
            tracing::error!(worker = %name, %how, max_restarts = MAX_RESTARTS, "backend server keeps exiting; leaving it down");
            return;
        }
        recent.push_back(now);
        tracing::warn!(worker = %name, %how, backoff_ms = backoff.as_millis() as u64, "backend server exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn spawn(spec: &ServerSpec) -> std::io::Result<tokio::process::Child> {
    let (program, args) = spec.argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).envs(&spec.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so that a stop reaches the workers a server forks (vLLM's engine).
    cmd.process_group(0);
    // The death signal follows the thread that forks: servers are spawned from the node's tokio
    // worker threads, which live as long as the process.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(spec.worker.clone(), out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(spec.worker.clone(), err));
    }
    Ok(child)
}

/// Copies a server's output into the log, line by line, behind the worker's name. Servers write
/// their own levels into their lines and stderr is not an error by itself (uvicorn logs to it),
/// so both streams go out at info.
async fn forward(name: String, stream: impl tokio::io::AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!("[{name}] {line}");
    }
}

/// SIGTERM to the server's group, then SIGKILL if it outlives [`STOP_GRACE`].
async fn terminate(name: &str, pid: Option<u32>, child: &mut tokio::process::Child) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: a plain syscall on the group this miner created for the child.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(_) => tracing::info!(worker = %name, "backend server stopped"),
        Err(_) => {
            tracing::warn!(worker = %name, grace_s = STOP_GRACE.as_secs(), "backend server ignored SIGTERM; killing it");
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
        }
    }
}
