//! What every handler shares: the actor graph's handles and the request-time settings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::graph::MinerGraph;

/// Request-time settings, copied out of the node's configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    /// TTL applied to challenge tokens, as the validator's own Fernet does.
    pub fernet_ttl_secs: u64,
    /// Time from a challenge's arrival by which its answer must be ready.
    pub deadline: Duration,
    /// Key-exchange timestamps older than this are refused (replay window + clock skew).
    pub max_timestamp_age: Duration,
    /// Key-exchange timestamps further in the future than this are refused.
    pub max_timestamp_ahead: Duration,
    pub default_max_tokens: u32,
    pub default_temperature: f32,
    pub default_top_p: f32,
    pub inference_enabled: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            fernet_ttl_secs: 3600,
            deadline: Duration::from_millis(50_000),
            max_timestamp_age: Duration::from_secs(330),
            max_timestamp_ahead: Duration::from_secs(300),
            default_max_tokens: 512,
            default_temperature: 0.7,
            default_top_p: 0.95,
            inference_enabled: false,
        }
    }
}

pub struct AppState {
    pub graph: MinerGraph,
    pub auth: Arc<ValidatorAuth>,
    /// Our hotkey's SS58, sent back on every challenge reply.
    pub miner_hotkey: String,
    pub settings: HttpSettings,
    pub started: Instant,
}
