//! Wiring: from a validated [`Config`] to a running actor graph and HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::ServerHandle;
use actix_web::web;
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::backend_worker::WorkerSpec;
use loosh_actors::graph::{GraphConfig, MinerGraph};
use loosh_actors::protocol::rsa_keys::MinerRsaKey;
use loosh_actors::scheduler::SchedulerSettings;
use loosh_actors::session::SessionSettings;
use loosh_actors::worker_supervisor::RestartPolicy;

use crate::config::Config;
use crate::http::state::{AppState, HttpSettings};

pub fn session_settings(cfg: &Config) -> SessionSettings {
    SessionSettings {
        key_ttl: cfg.fiber_key_ttl,
        key_grace: cfg.fiber_key_grace,
        nonce_window: cfg.key_exchange_window(),
        ..SessionSettings::default()
    }
}

pub fn http_settings(cfg: &Config) -> HttpSettings {
    HttpSettings {
        max_body_bytes: cfg.max_body_bytes,
        fernet_ttl_secs: 3600,
        deadline: cfg.challenge_deadline,
        max_timestamp_age: cfg.key_exchange_window(),
        max_timestamp_ahead: cfg.fiber_timestamp_skew,
        default_max_tokens: cfg.default_max_tokens,
        default_temperature: cfg.default_temperature,
        default_top_p: cfg.default_top_p,
        inference_enabled: cfg.enable_inference_endpoint,
    }
}

/// Spawns the actor graph for `cfg` on the current tokio runtime.
pub async fn spawn_graph(
    cfg: &Config,
    workers: Vec<WorkerSpec>,
    rsa: Arc<MinerRsaKey>,
) -> Result<MinerGraph, loosh_actors::graph::GraphError> {
    MinerGraph::spawn(GraphConfig {
        sessions: session_settings(cfg),
        scheduler: SchedulerSettings {
            max_in_flight: cfg.max_concurrent_requests,
            max_queue_per_worker: cfg.max_concurrent_requests,
            ..SchedulerSettings::default()
        },
        restart: RestartPolicy::default(),
        workers,
        crypto_actors: loosh_actors::challenge_crypto::DEFAULT_POOL_SIZE,
        rsa,
    })
    .await
}

/// A running HTTP server on its own actix system thread.
pub struct HttpNode {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl HttpNode {
    /// Starts serving `graph` on host:port (0 = any free port).
    pub fn start(
        graph: MinerGraph,
        auth: Arc<ValidatorAuth>,
        miner_hotkey: String,
        settings: HttpSettings,
        host: &str,
        port: u16,
        workers: usize,
    ) -> std::io::Result<Self> {
        let state = web::Data::new(AppState { graph, auth, miner_hotkey, settings, started: Instant::now() });
        let (tx, rx) = std::sync::mpsc::channel();
        let host = host.to_string();
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                match crate::http::bind(state, &host, port, workers) {
                    Ok((server, addr)) => {
                        let _ = tx.send(Ok((addr, server.handle())));
                        server.await
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        Ok(())
                    }
                }
            })
        })?;
        let (addr, handle) = rx.recv().map_err(|_| std::io::Error::other("HTTP thread died while binding"))??;
        Ok(Self { addr, handle, thread: Some(thread) })
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server thread.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
