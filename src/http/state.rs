//! What every handler shares: the engine's front door (which runs the protocol) and the
//! HTTP-only settings: body caps, read deadlines, connection limits.

use std::time::{Duration, Instant};

use loosh_actors::front_door::FrontDoor;

use super::refusals::RefusalLog;

/// `KEEP_ALIVE_SECONDS`' default: nginx's 75 s, far past the validator's httpx pool, which drops
/// an idle connection after 5 s. Closing at the client's own expiry races its reuse (httpx reports
/// `RemoteProtocolError`, the validator counts no answer and does not retry); closing later never
/// does, because the client gives the connection up first.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 75;

/// HTTP-only settings: the node's configuration holds them as they are (`Config::http`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `MAX_BODY_BYTES`: the cap on a challenge body (and the legacy `/inference`).
    pub max_body_bytes: usize,
    /// A key exchange is a few hundred bytes of JSON; anything near this is not one.
    pub max_key_exchange_bytes: usize,
    /// `BODY_READ_TIMEOUT_SECONDS`: a body not fully arrived by then is dropped with 408.
    pub body_read_timeout: Duration,
    /// `HEADER_READ_TIMEOUT_SECONDS`: actix's `client_request_timeout`.
    pub header_read_timeout: Duration,
    /// `KEEP_ALIVE_SECONDS`: an idle keep-alive connection is closed after this ([`DEFAULT_KEEP_ALIVE_SECS`]).
    pub keep_alive: Duration,
    /// `MAX_CONNECTIONS`: open connections across the server; past it, new ones wait in the backlog.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_ADDRESS`: one unproven address's connections ([`super::connections`]).
    pub max_connections_per_address: usize,
    pub inference_enabled: bool,
    /// `METRICS_HOST` / `METRICS_PORT`: where `/health` and `/metrics` are served (`None`: nowhere
    /// but the public port, if `ops_on_public_port`). Port 0 picks a free one.
    pub ops_listen: Option<(String, u16)>,
    /// `METRICS_ON_PUBLIC_PORT`: also serve `/health` and `/metrics` to the internet.
    pub ops_on_public_port: bool,
    /// `ENABLE_API_DOCS`: serve `/openapi.json`, `/docs` and `/redoc` on the public port.
    pub api_docs: bool,
    /// `HEALTH_GRACE_SECONDS`: `/health` answers 503 once no worker has been ready this long.
    pub health_grace: Duration,
    /// `TRUSTED_PROXIES`: whose `X-Forwarded-For` is believed ([`super::client_ip`]).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_key_exchange_bytes: 8 * 1024,
            body_read_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(DEFAULT_KEEP_ALIVE_SECS),
            max_connections: 2048,
            max_connections_per_address: 64,
            inference_enabled: false,
            ops_listen: Some(("127.0.0.1".into(), 0)),
            ops_on_public_port: false,
            api_docs: false,
            health_grace: Duration::from_secs(300),
            trusted_proxies: Vec::new(),
        }
    }
}

pub struct AppState {
    /// The engine, through its front door.
    pub door: FrontDoor,
    /// Our hotkey's SS58, sent back on every challenge reply.
    pub miner_hotkey: String,
    pub settings: HttpSettings,
    pub started: Instant,
    pub refusals: RefusalLog,
    /// Since when no worker has been ready (`/health`).
    pub ready_clock: super::ready_clock::ReadyClock,
}
