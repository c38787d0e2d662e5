//! Backend servers the miner starts and watches itself: an `openai` worker in `WORKERS` may carry
//! the `command` that serves it (`vllm serve MODEL --port 8101`, with `env` such as
//! `CUDA_VISIBLE_DEVICES=1`). Each runs in its own process group under a small supervisor task:
//! its output goes to the miner's log prefixed with the worker's name, an exit is followed by a
//! restart with backoff (under [`RESTART_POLICY`], then it stays down and the log says so: the
//! other workers still answer), and the miner's shutdown stops it (SIGTERM to the group, SIGKILL after
//! [`STOP_GRACE`]). Whenever the server's leader process ends, what it left in its group is
//! killed, and if the miner itself is killed, the kernel ends the server too
//! (`PR_SET_PDEATHSIG`), so no orphan keeps a GPU.
//!
//! Its command line and environment may carry keys (`--api-key`, `HF_TOKEN`), and servers echo
//! their arguments (vLLM logs its whole `Namespace`): every line of ours that shows the command,
//! and every forwarded line, has those values masked ([`Secrets`]). Forwarded output is decoded
//! lossily and cut at [`MAX_LINE`] bytes, so odd bytes or a line without end neither stop the
//! forwarding nor grow the miner's memory.
//!
//! The node waits for each server's `GET /v1/models` before it starts its workers: a model can
//! take many minutes to load, longer than a worker's own restart budget.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::settings::{Decision, RestartHistory, RestartPolicy};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::watch;

/// How a server that exits is restarted: ten times in ten minutes, waiting 1 s doubled up to a
/// minute (a server that ran longer than that before it exited starts over at 1 s).
pub const RESTART_POLICY: RestartPolicy = RestartPolicy::TEN_IN_TEN_MINUTES;
/// How long a stopping server gets after SIGTERM (vLLM frees GPU memory on the way out).
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// The most of one output line forwarded to the log; the rest of a longer line is dropped (and
/// counted in the marker that ends it).
pub const MAX_LINE: usize = 8 * 1024;

/// Flags whose value is a secret, by name (leading dashes off, `_` read as `-`, any case):
/// these, and any name ending in `-` and one of these (`--hf-token`, `--openai-api-key`). The
/// value is the next argument, or what follows `=`.
const SECRET_FLAGS: [&str; 4] = ["api-key", "token", "password", "secret"];
/// Environment variables whose value is a secret: names containing one of these (any case).
const SECRET_VARS: [&str; 4] = ["KEY", "TOKEN", "PASSWORD", "SECRET"];

/// The secret values in a server's command line and environment, masked wherever our log would
/// show them. Matching the values themselves (not the flags) masks them however a server echoes
/// its arguments: `--api-key X`, `['--api-key', 'X']`, `api_key='X'`.
#[derive(Debug, Clone, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    const MASK: &'static str = "***";

    fn of(spec: &ServerSpec) -> Self {
        let is_secret_flag = |flag: &str| {
            let name = flag.trim_start_matches('-').replace('_', "-").to_ascii_lowercase();
            flag.starts_with('-') && SECRET_FLAGS.iter().any(|s| name == *s || name.ends_with(&format!("-{s}")))
        };
        let mut values = Vec::new();
        let mut args = spec.argv.iter().skip(1).peekable();
        while let Some(arg) = args.next() {
            match arg.split_once('=') {
                Some((flag, value)) if is_secret_flag(flag) => values.push(value.to_string()),
                None if is_secret_flag(arg) => values.extend(args.next().cloned()),
                _ => {}
            }
        }
        for (name, value) in &spec.env {
            if SECRET_VARS.iter().any(|s| name.to_ascii_uppercase().contains(s)) {
                values.push(value.clone());
            }
        }
        values.retain(|v| !v.is_empty());
        // Longest first, so that a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self(values)
    }

    fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), Self::MASK));
            }
        }
        out
    }

    /// The length of the longest secret: a line is kept this far past [`MAX_LINE`] until it is
    /// masked, so that a secret straddling the cut is masked, not half shown.
    fn longest(&self) -> usize {
        self.0.first().map_or(0, String::len)
    }
}

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

/// The running servers; [`ManagedServers::stop`] ends them. The default is none (a node whose
/// workers reach servers someone else runs).
#[derive(Default)]
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
    let mut history = RestartHistory::default();
    let secrets = Arc::new(Secrets::of(&spec));
    // Masked argument by argument; shown escaped (`?`): an argument may hold a newline.
    let command = spec.argv.iter().map(|a| secrets.redact(a)).collect::<Vec<_>>().join(" ");
    loop {
        let mut child = match spawn(&spec, &secrets) {
            Ok(child) => child,
            Err(e) => {
                // The program only: its arguments may carry a key (`--api-key`).
                let program = spec.argv.first().map_or("", String::as_str);
                tracing::error!(worker = %name, error = %e, program, "backend server cannot start");
                return;
            }
        };
        let pid = child.id();
        tracing::info!(worker = %name, pid, ?command, "backend server started");
        history.started(Instant::now());
        let status = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = status else {
            terminate(&name, pid, &mut child).await;
            return;
        };
        kill_leftovers(&name, pid);
        let how = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        let backoff = match history.on_failure(&RESTART_POLICY, Instant::now()) {
            Decision::Restart { after } => after,
            Decision::GiveUp => {
                let max_restarts = RESTART_POLICY.max_restarts;
                // `OnGiveUp::LeaveDown`: the server serves one worker, and the others still answer.
                tracing::error!(worker = %name, %how, max_restarts, "backend server keeps exiting; leaving it down");
                return;
            }
        };
        tracing::warn!(worker = %name, %how, backoff_ms = backoff.as_millis() as u64, "backend server exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn spawn(spec: &ServerSpec, secrets: &Arc<Secrets>) -> std::io::Result<tokio::process::Child> {
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
        tokio::spawn(forward(spec.worker.clone(), BufReader::new(out), secrets.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(spec.worker.clone(), BufReader::new(err), secrets.clone()));
    }
    Ok(child)
}

/// Copies a server's output into the log, line by line, behind the worker's name, until the
/// stream ends or fails. Servers write their own levels into their lines and stderr is not an
/// error by itself (uvicorn logs to it), so both streams go out at info. Bytes that are not
/// UTF-8 are replaced, not fatal; a line holds at most [`MAX_LINE`] bytes (plus the longest
/// secret, until masked) in memory however long it runs.
async fn forward(name: String, mut stream: impl AsyncBufRead + Unpin, secrets: Arc<Secrets>) {
    let keep = MAX_LINE + secrets.longest();
    let mut line: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    while let Ok(buf) = stream.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        let take = chunk.len().min(keep.saturating_sub(line.len()));
        line.extend_from_slice(&chunk[..take]);
        dropped += chunk.len() - take;
        let used = newline.map_or(buf.len(), |i| i + 1);
        stream.consume(used);
        if newline.is_some() {
            log_line(&name, &line, dropped, &secrets);
            line.clear();
            dropped = 0;
        }
    }
    // The stream ended (or failed) within a line: what there is of it.
    if !line.is_empty() || dropped > 0 {
        log_line(&name, &line, dropped, &secrets);
    }
}

/// Logs one forwarded line: decoded lossily, its secrets masked, cut at [`MAX_LINE`] bytes.
fn log_line(name: &str, raw: &[u8], dropped: usize, secrets: &Secrets) {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let decoded = String::from_utf8_lossy(raw);
    let text = secrets.redact(&decoded);
    let mut cut = text.len().min(MAX_LINE);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = dropped + (text.len() - cut);
    if dropped == 0 {
        tracing::info!("[{name}] {text}");
    } else {
        tracing::info!("[{name}] {} [line cut: {dropped} more bytes dropped]", &text[..cut]);
    }
}

/// SIGKILL to what is left of a server's process group once its leader has exited and been
/// reaped: the workers it forked (vLLM's engine, a shell's background job) must not outlive it,
/// holding a GPU or a port the next start needs. While any member lives the group's id cannot be
/// given to a new process, so the signal reaches only the server's own.
fn kill_leftovers(name: &str, pid: Option<u32>) {
    let Some(group) = pid.and_then(|p| i32::try_from(p).ok()) else { return };
    // SAFETY: a plain syscall on the group this miner created for the server.
    if unsafe { libc::killpg(group, libc::SIGKILL) } == 0 {
        tracing::warn!(worker = %name, group, "the backend server left processes behind; killed its process group");
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
        Ok(_) => {
            kill_leftovers(name, pid);
            tracing::info!(worker = %name, "backend server stopped");
        }
        Err(_) => {
            tracing::warn!(worker = %name, grace_s = STOP_GRACE.as_secs(), "backend server ignored SIGTERM; killing it");
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            kill_leftovers(name, pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], env: &[(&str, &str)]) -> ServerSpec {
        ServerSpec {
            worker: "w".into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            base_url: "http://127.0.0.1:1/v1".into(),
            ready_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_values_of_secret_flags_and_variables_are_masked_however_they_are_echoed() {
        let secrets = Secrets::of(&spec(
            &[
                "vllm",
                "serve",
                "--api-key",
                "k1",
                "--hf_token=t1",
                "--OPENAI-API-KEY",
                "k2",
                "--port",
                "8101",
                "--token",
            ],
            &[("HF_TOKEN", "t2"), ("CUDA_VISIBLE_DEVICES", "1")],
        ));
        let line = "Namespace(api_key='k1', hf_token='t1', openai_api_key='k2', port=8101) HF_TOKEN=t2 gpu 1";
        assert_eq!(
            secrets.redact(line),
            "Namespace(api_key='***', hf_token='***', openai_api_key='***', port=8101) HF_TOKEN=*** gpu 1"
        );
        assert!(matches!(secrets.redact("nothing secret"), Cow::Borrowed(_)));
        // The program itself and a flag's own name are never taken for a value.
        let none = Secrets::of(&spec(&["--api-key", "--port", "8101"], &[]));
        assert_eq!(none.redact("--port 8101"), "--port 8101");
    }
}
