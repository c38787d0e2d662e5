//! Wiring: from a validated [`Config`] to a running actor graph and HTTP server — written once, in
//! [`Node::start`], for `main` and the benches (tests that need a hand-made graph use
//! [`HttpNode::start`] on it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::ServerHandle;
use actix_web::web;
use loosh_actors::front_door::FrontDoor;
use loosh_actors::front_door::OpenError;
use loosh_actors::front_door::ValidatorAuth;
use loosh_actors::settings::DoorSettings;
use loosh_actors::settings::GraphConfig;
use loosh_actors::settings::Hotkey;
use loosh_actors::settings::RestartPolicy;
use loosh_actors::settings::WorkerSpec;

use crate::config::Config;
use crate::http::refusals::RefusalLog;
use crate::http::state::{AppState, HttpSettings};
use crate::managed_server::ManagedServers;

/// Opens the engine's front door for `cfg` (spawning the actor graph behind it) on the current
/// tokio runtime.
async fn open_door(cfg: &Config, workers: Vec<WorkerSpec>, auth: Arc<ValidatorAuth>) -> Result<FrontDoor, OpenError> {
    let graph = GraphConfig {
        sessions: cfg.sessions.clone(),
        scheduler: cfg.scheduler.clone(),
        restart: restart_policy(),
        workers,
    };
    // The rate limits in force are known only now (`--dev`), not when the file was read.
    let door = DoorSettings { rate_limits: cfg.active_rate_limits().cloned(), ..cfg.door.clone() };
    FrontDoor::open(graph, door, auth).await
}

/// How the graph restarts what crashes: the default (see [`RestartPolicy`]), or in a
/// `test-hooks` build what a test asked for (see `http::test_hooks`).
fn restart_policy() -> RestartPolicy {
    #[cfg(feature = "test-hooks")]
    if let Some(policy) = crate::http::test_hooks::restart_policy() {
        return policy;
    }
    RestartPolicy::default()
}

/// Where a worker runs, for `loosh_worker_info` and `status`: its device, or its server's URL.
pub fn worker_place(spec: &WorkerSpec) -> String {
    match &spec.engine {
        loosh_actors::settings::EngineSpec::Embedded(_) => spec.device.to_string(),
        loosh_actors::settings::EngineSpec::OpenAi(o) => o.base_url.clone(),
    }
}

/// What a node is made of besides its configuration.
pub struct NodeParts {
    pub hotkey: Hotkey,
    pub workers: Vec<WorkerSpec>,
    pub auth: Arc<ValidatorAuth>,
    /// The chain endpoint: `Some` starts the heartbeat (and the Challenge API poller when
    /// `CHALLENGE_API_URL` is set) under the graph's root.
    pub chain_url: Option<String>,
    /// HTTP listener (host, port); port 0 picks a free one.
    pub listen: (String, u16),
    /// The backend servers the miner runs itself (already started and answering): the node stops
    /// them after its workers, in [`Node::stop`].
    pub servers: ManagedServers,
}

/// A running miner: the actor graph and the HTTP server in front of it.
pub struct Node {
    pub door: FrontDoor,
    pub http: HttpNode,
    /// Where the HTTP server listens.
    pub addr: SocketAddr,
    servers: ManagedServers,
}

impl Node {
    /// Spawns the graph (with a fresh RSA key), the chain actors when asked, and the HTTP server.
    /// Runs on the caller's tokio runtime; the HTTP server gets its own thread.
    pub async fn start(cfg: &Config, parts: NodeParts) -> anyhow::Result<Self> {
        let placed: Vec<(String, String)> = parts.workers.iter().map(|w| (w.name.clone(), worker_place(w))).collect();
        let door = open_door(cfg, parts.workers, parts.auth.clone()).await?;
        for (name, place) in &placed {
            let m = door.metrics();
            m.worker_info.with_label_values(&[name, place]).set(1);
            // At zero from the start, so that a restart loop's alert has a series to rise from.
            m.worker_restarts.with_label_values(&[name]);
            m.engine_stalls.with_label_values(&[name]);
            m.worker_down.with_label_values(&[name]);
        }
        crate::process_metrics::register(&door.metrics().registry)?;
        if let Some(url) = parts.chain_url {
            start_chain(&door, cfg, &parts.hotkey, url).await?;
        }
        let (host, port) = parts.listen;
        let http = HttpNode::start(
            door.clone(),
            parts.hotkey.ss58().to_string(),
            cfg.http.clone(),
            &host,
            port,
            cfg.http_workers,
        )
        .map_err(ListenError)?;
        Ok(Self { door, addr: http.addr, http, servers: parts.servers })
    }

    /// Starts the chain actors (heartbeat, Challenge API poller) once the chain answers: `main`
    /// serves before that, with admission closed, when the chain is down at boot.
    pub async fn start_chain(&self, cfg: &Config, hotkey: &Hotkey, url: String) -> anyhow::Result<()> {
        start_chain(&self.door, cfg, hotkey, url).await
    }

    /// Starts only the Challenge API poller (when `CHALLENGE_API_URL` is set): `--dev` has no
    /// chain, but the Challenge API still names validators and their addresses.
    pub async fn start_challenge_api(&self, cfg: &Config, hotkey: &Hotkey) -> anyhow::Result<()> {
        start_challenge_api(&self.door, cfg, hotkey).await
    }

    /// The one way a node stops, whatever stops it (a signal, a failure, a benchmark's end):
    /// admission closes, in-flight challenges finish and the HTTP servers close, every actor
    /// stops, the backend servers the miner runs stop, and the engines free their models (a GPU
    /// context freed after the process has begun to exit aborts it instead of exiting 0), waiting
    /// at most `ENGINES_STOP_WITHIN`. Returns whether every engine stopped in that time.
    pub async fn stop(self) -> bool {
        self.door.close_admission();
        self.http.stop().await;
        self.door.stop();
        self.servers.stop().await;
        let stopped =
            tokio::task::spawn_blocking(|| FrontDoor::wait_for_engines(ENGINES_STOP_WITHIN)).await.unwrap_or(false);
        if stopped {
            tracing::info!("all engines stopped");
        } else {
            tracing::warn!(within_s = ENGINES_STOP_WITHIN.as_secs(), "an engine did not stop in time; going on");
        }
        stopped
    }
}

/// How long [`Node::stop`] waits for the engines to free their models.
const ENGINES_STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// `API_PORT` or `METRICS_PORT` cannot be listened on (the message names which and where).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ListenError(pub std::io::Error);

impl ListenError {
    /// A host address this machine does not have, a port it may not open (below 1024 without the
    /// capability) or a host that is not an address: the same file fails again. A port in use is
    /// not: the process holding it (often the Python miner, not yet stopped) may let it go, and
    /// a restart then succeeds.
    pub fn is_configuration(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(self.0.kind(), AddrNotAvailable | PermissionDenied | InvalidInput)
    }
}

/// The heartbeat under the graph's root, and the Challenge API poller when `CHALLENGE_API_URL` is set.
async fn start_chain(door: &FrontDoor, cfg: &Config, hotkey: &Hotkey, url: String) -> anyhow::Result<()> {
    door.start_chain(crate::registration::heartbeat_settings(cfg, url), hotkey.clone()).await?;
    start_challenge_api(door, cfg, hotkey).await
}

/// The Challenge API poller, when `CHALLENGE_API_URL` is set.
async fn start_challenge_api(door: &FrontDoor, cfg: &Config, hotkey: &Hotkey) -> anyhow::Result<()> {
    if let Some(url) = &cfg.challenge_api_url {
        door.start_challenge_api(url.clone(), hotkey.clone(), cfg.challenge_api_poll).await?;
    }
    Ok(())
}

/// A running HTTP server (and the operator's, when configured) on its own actix system thread.
pub struct HttpNode {
    pub addr: SocketAddr,
    /// Where `/health` and `/metrics` are served, when on their own address.
    pub ops_addr: Option<SocketAddr>,
    pub handle: ServerHandle,
    ops_handle: Option<ServerHandle>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl HttpNode {
    /// Starts serving `door` on host:port (0 = any free port).
    pub fn start(
        door: FrontDoor,
        miner_hotkey: String,
        settings: HttpSettings,
        host: &str,
        port: u16,
        workers: usize,
    ) -> std::io::Result<Self> {
        let state = web::Data::new(AppState {
            door,
            miner_hotkey,
            settings,
            started: Instant::now(),
            refusals: RefusalLog::default(),
            ready_clock: Default::default(),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let host = host.to_string();
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let ops = match state.settings.ops_listen.clone() {
                    Some((ops_host, ops_port)) => match crate::http::bind_ops(state.clone(), &ops_host, ops_port) {
                        Ok(bound) => Some(bound),
                        Err(e) => {
                            let _ = tx.send(Err(std::io::Error::new(
                                e.kind(),
                                format!("METRICS_PORT={ops_port}: cannot listen on {ops_host}:{ops_port} for /health and /metrics ({e}); set METRICS_PORT to a free port, or off"),
                            )));
                            return Ok(());
                        }
                    },
                    None => None,
                };
                match crate::http::bind(state, &host, port, workers) {
                    Ok((server, addr)) => {
                        let ops_info = ops.as_ref().map(|(s, a)| (*a, s.handle()));
                        let _ = tx.send(Ok((addr, server.handle(), ops_info)));
                        match ops {
                            Some((ops_server, _)) => {
                                let (main, _) = futures_join(server, ops_server).await;
                                main
                            }
                            None => server.await,
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::new(
                            e.kind(),
                            format!("API_PORT={port}: cannot listen on {host}:{port} ({e})"),
                        )));
                        Ok(())
                    }
                }
            })
        })?;
        let (addr, handle, ops) = rx.recv().map_err(|_| std::io::Error::other("HTTP thread died while binding"))??;
        let (ops_addr, ops_handle) = ops.map_or((None, None), |(a, h)| (Some(a), Some(h)));
        Ok(Self { addr, ops_addr, handle, ops_handle, thread: Some(thread) })
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server thread.
    pub async fn stop(mut self) {
        if let Some(ops) = self.ops_handle.take() {
            ops.stop(false).await;
        }
        self.handle.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Runs both servers to completion on the actix system (no `futures` dependency for one join).
async fn futures_join(
    a: actix_web::dev::Server,
    b: actix_web::dev::Server,
) -> (std::io::Result<()>, std::io::Result<()>) {
    let b = actix_web::rt::spawn(b);
    let ra = a.await;
    let rb = b.await.unwrap_or(Ok(()));
    (ra, rb)
}

/// The entry of an engine child process (the hidden `engine-child` subcommand): a node runs each
/// child engine from its own executable, so every binary that starts a node (`loosh-miner`,
/// `loosh-bench`) answers it with this. Its log goes to stderr, which the worker re-logs under the
/// worker's name.
pub fn run_engine_child() -> ! {
    crate::logging::init_engine_child();
    std::process::exit(FrontDoor::run_engine_child());
}
