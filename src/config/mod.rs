//! The node's configuration: the Python miner's `.env` variables (same names, same meaning) plus
//! ours, loaded once from the environment, then the file named by `--env-file` / `ENV_FILE`, or else
//! `./.env` and `/workspace/.env` (in that order of precedence), validated at start with messages
//! that name the variable.

use std::path::PathBuf;
use std::time::Duration;

use loosh_actors::settings::{ChainSettings, DoorSettings, RateLimitSettings, SchedulerSettings, SessionSettings};
use thiserror::Error;

use crate::http::state::HttpSettings;

/// Which backend workers the node runs (`WORKERS`, or what the Python miner's variables imply).
pub mod workers;

/// `.env` files read as python-dotenv reads them.
pub mod dotenv;

/// The environment and `.env` files, and the typed readers of a variable's text.
mod source;

/// [`Config::from_source`]: the variables read into the configuration.
mod from_source;

/// The sections that are the engine's settings types (and the HTTP server's), one function each.
mod sections;

/// The configuration in words: the start-up summary and the differences from the Python miner.
mod summary;

pub use from_source::default_threads;
pub use source::{env_file, set_env_file, Source};

/// A variable that is set but wrong; the message names it and what it accepts.
#[derive(Debug, Error)]
#[error("{var}={value:?}: {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

/// Which inference backend serves challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmBackend {
    /// llama.cpp in process: `LLM_BACKEND=embedded`, or `llamacpp` with `MODEL_PATH` set.
    Embedded,
    /// An external llama.cpp server (`LLAMACPP_API_BASE`): `LLM_BACKEND=llamacpp` without
    /// `MODEL_PATH`, which is what the Python miner means by `llamacpp`.
    LlamaCppServer,
    Vllm,
    Ollama,
}

/// Where embedded engines run by default (`ENGINE_PROCESS`); a worker's `"process"` overrides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineProcessPolicy {
    /// GPU engines in a child process each (a CUDA abort costs one GPU, not the node); CPU
    /// engines on a thread of the node.
    Gpu,
    /// Every embedded engine in a child process.
    Always,
    /// Every embedded engine on a thread of the node.
    Never,
}

#[derive(Debug, Clone)]
pub struct Config {
    // The engine's settings, read into its own types (`loosh_actors::settings`).
    /// `FIBER_KEY_TTL_SECONDS`, `FIBER_KEY_GRACE_SECONDS`: how long a validator's key lives.
    pub sessions: SessionSettings,
    /// The front door: `CHALLENGE_DEADLINE_MS`, the key-exchange window
    /// (`FIBER_HANDSHAKE_TIMEOUT_SECONDS` + `FIBER_TIMESTAMP_SKEW_SECONDS`), the sampling defaults,
    /// `RSA_SLOTS`, `SIGNATURE_SLOTS`, `MAX_IN_FLIGHT_PER_VALIDATOR` (default three quarters of
    /// `MAX_CONCURRENT_REQUESTS`, so that one hotkey cannot take every slot) and `TOOL_CALL_TEXT`.
    /// Its `rate_limits` is `None` here: see [`Config::active_rate_limits`].
    pub door: DoorSettings,
    /// `MAX_CONCURRENT_REQUESTS` (`max_in_flight`), time-aware admission (`TIME_AWARE_ADMISSION`,
    /// `ADMISSION_*`) and hedging (`HEDGING`, `HEDGE_AFTER_FACTOR`, `HEDGE_MIN_MS`).
    pub scheduler: SchedulerSettings,
    /// The heartbeat's: `NETUID`, `METAGRAPH_SYNC_BLOCKS`, `CHAIN_POLL_SECONDS`,
    /// `MIN_VALIDATOR_STAKE` (in rao), `AXON_EXTERNAL_IP` / `AXON_EXTERNAL_PORT` (the address the
    /// node posts itself). Its `url` is empty here: the endpoint is the one that answers at start
    /// ([`Config::chain_url`], then `crate::registration::heartbeat_settings`).
    pub chain: ChainSettings,
    /// The HTTP server's: body sizes and read timeouts, `KEEP_ALIVE_SECONDS`, `MAX_CONNECTIONS`
    /// (and per address), `/inference`, where `/health` and `/metrics` are served (`METRICS_HOST`,
    /// `METRICS_PORT`, `METRICS_ON_PUBLIC_PORT`), `ENABLE_API_DOCS`, `HEALTH_GRACE_SECONDS` and
    /// `TRUSTED_PROXIES`.
    pub http: HttpSettings,
    // Network and wallet
    pub subtensor_network: String,
    pub subtensor_address: Option<String>,
    pub wallet_name: String,
    pub hotkey_name: String,
    pub wallet_path: PathBuf,
    // HTTP listener
    pub api_host: String,
    pub api_port: u16,
    pub http_workers: usize,
    /// `RATE_LIMIT_ENABLED`: unset means on, except under `--dev` (see `commands::load_config`).
    pub rate_limit_enabled: Option<bool>,
    /// `RATE_LIMITS` over the Python miner's per-IP defaults, and `HOTKEY_RATE_LIMIT_PER_MINUTE`;
    /// in force unless `rate_limit_enabled` says off ([`Config::active_rate_limits`]).
    pub rate_limits: RateLimitSettings,
    // Inference
    pub llm_backend: LlmBackend,
    /// `LLM_BACKEND` as written (lower case), for saying what it means here.
    pub llm_backend_name: String,
    pub default_model: String,
    pub model_path: Option<PathBuf>,
    pub max_model_len: u32,
    pub llama_threads: i32,
    pub llama_gpu_layers: u32,
    pub llama_batch: u32,
    /// `ENGINE_STALL_SECONDS`: an embedded engine step running longer than this (with work in
    /// flight) fails its worker, which restarts.
    pub engine_stall_after: Duration,
    /// `ENGINE_PROCESS`: which embedded engines run in a child process of their own.
    pub engine_process: EngineProcessPolicy,
    /// `ENGINE_EXE`: the executable engine children run (`loosh-miner engine-child`); unset, the
    /// node's own. Only tests and unusual installs set it.
    pub engine_exe: Option<PathBuf>,
    /// Challenges one embedded worker generates at once (continuous batching); 0 = automatic: as
    /// many as the GPU's free memory holds next to the model, 4 on a CPU.
    pub llama_parallel: u32,
    /// `WORKERS` / `WORKERS_FILE`: the explicit worker list, when given.
    pub workers: Option<Vec<crate::config::workers::WorkerConfig>>,
    pub vllm_api_base: String,
    /// `LLAMACPP_API_BASE`: the external llama.cpp server of `LLM_BACKEND=llamacpp` without
    /// `MODEL_PATH` (llama-cpp-python's server listens on 8080 by default).
    pub llamacpp_api_base: String,
    pub ollama_base_url: String,
    pub ollama_timeout: Duration,
    /// Redacted in `Debug`.
    pub openai_api_key: Option<loosh_actors::settings::Secret>,
    /// `OPENAI_MAX_MODEL_LEN`: the context length of OpenAI-compatible servers that do not report
    /// one in `GET /models` (llama-cpp-python, Ollama); `max_tokens` is clamped to it.
    pub openai_max_model_len: Option<u32>,
    // Validators
    pub enable_validator_whitelist: bool,
    pub validator_hotkeys: Vec<String>,
    /// `VALIDATOR_DENY_HOTKEYS`: refused whatever else allows them.
    pub validator_deny_hotkeys: Vec<String>,
    /// `STRICT_VALIDATOR_ADDRESSES`: a validator may exchange keys only from the addresses the
    /// Challenge API (and the chain) report for it; anything else gets 403 (off by default).
    pub strict_validator_addresses: bool,
    pub challenge_api_url: Option<String>,
    pub challenge_api_poll: Duration,
    /// `ALLOW_ALL_WHEN_EMPTY`: every hotkey is let in while the allowed set is empty (an explicit
    /// opt-in on every network).
    pub allow_all_when_empty: bool,
    // Logs
    pub log_level: String,
    /// `LOG_FILE` (the file written), `LOG_ROTATION` and `LOG_MAX_FILES`.
    pub log_file: Option<crate::logging::LogFile>,
    /// `LOG_FORMAT=json`: one JSON object per line.
    pub log_json: bool,
    /// Variables that were set but that this build does not act on yet: reported at start.
    pub unused_settings: Vec<(String, String)>,
}

/// `METRICS_PORT`'s default: outside Prometheus' exporter range (9100-9999, every port of it
/// allocated; 9100 is node_exporter's, which many miners' hosts run) and clear of the ports beside
/// a miner (8000 API, 8001 vLLM, 8080 llama.cpp, 9944 subtensor, 11434 Ollama); 78 is the subnet.
pub const DEFAULT_METRICS_PORT: u16 = 8478;

/// What a SIGHUP applies to the running miner; any other variable that changed is named in the
/// log as needing a restart (a restart reloads every model and makes a new RSA key, so every
/// validator must re-handshake: worth avoiding for a list edit).
pub const RELOADABLE: &[&str] = &[
    "LOG_LEVEL",
    "VALIDATOR_HOTKEYS",
    "VALIDATOR_DENY_HOTKEYS",
    "STRICT_VALIDATOR_ADDRESSES",
    "RATE_LIMITS",
    "RATE_LIMIT_ENABLED",
    "HOTKEY_RATE_LIMIT_PER_MINUTE",
];

/// The variables that shape the workers: a SIGHUP that changes them applies the resulting worker
/// list (unchanged workers keep running; see `FrontDoor::set_workers`). `MAX_CONCURRENT_REQUESTS`
/// is not among them: it also caps the scheduler, which a restart sets.
pub const WORKER_VARS: &[&str] = &[
    "WORKERS",
    "WORKERS_FILE",
    "LLM_BACKEND",
    "MODEL_PATH",
    "DEFAULT_MODEL",
    "MAX_MODEL_LEN",
    "LLAMA_THREADS",
    "LLAMA_GPU_LAYERS",
    "LLAMA_BATCH",
    "LLAMA_PARALLEL",
    "ENGINE_PROCESS",
    "ENGINE_EXE",
    "ENGINE_STALL_SECONDS",
    "VLLM_API_BASE",
    "LLAMACPP_API_BASE",
    "OLLAMA_BASE_URL",
    "OLLAMA_TIMEOUT",
    "OPENAI_API_KEY",
    "OPENAI_MAX_MODEL_LEN",
];

impl Config {
    /// Checks that need the whole picture (hotkeys that parse, URLs); the workers are checked when
    /// their specs are built ([`crate::config::workers::worker_specs`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (var, list) in
            [("VALIDATOR_HOTKEYS", &self.validator_hotkeys), ("VALIDATOR_DENY_HOTKEYS", &self.validator_deny_hotkeys)]
        {
            for h in list {
                if loosh_actors::settings::ss58_decode(h).is_err() {
                    return Err(ConfigError { var, value: h.clone(), expected: "comma-separated SS58 hotkeys".into() });
                }
            }
        }
        // A backend URL on this host's API_PORT is the miner calling itself: every challenge would
        // loop until its deadline. (The Python miner's env.example puts vLLM on 8000 beside an API on 8000.)
        let backend = match self.llm_backend {
            LlmBackend::Vllm if self.workers.is_none() => Some(("VLLM_API_BASE", &self.vllm_api_base)),
            LlmBackend::LlamaCppServer if self.workers.is_none() => {
                Some(("LLAMACPP_API_BASE", &self.llamacpp_api_base))
            }
            LlmBackend::Ollama if self.workers.is_none() => Some(("OLLAMA_BASE_URL", &self.ollama_base_url)),
            _ => None,
        };
        if let Some((var, url)) = backend {
            let parsed = reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
            let Some(parsed) = parsed else {
                return Err(ConfigError { var, value: url.clone(), expected: "an http(s) URL".into() });
            };
            let local = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "0.0.0.0" | "[::1]" | "::1"));
            if local && parsed.port_or_known_default() == Some(self.api_port) {
                return Err(ConfigError {
                    var,
                    value: url.clone(),
                    expected: format!(
                        "the backend server's address; port {} is this miner's own API_PORT (put the server on another port, e.g. 8001)",
                        self.api_port
                    ),
                });
            }
        }
        if let Some(url) = &self.challenge_api_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError {
                    var: "CHALLENGE_API_URL",
                    value: url.clone(),
                    expected: "an http(s) URL".into(),
                });
            }
        }
        Ok(())
    }

    /// How old a key-exchange timestamp may be (replay window + clock skew). Nonces are remembered
    /// this long from the later of now and their timestamp, so every timestamp accepted is covered
    /// by replay protection.
    pub fn key_exchange_window(&self) -> Duration {
        self.door.max_timestamp_age
    }

    /// `FIBER_HANDSHAKE_TIMEOUT_SECONDS`: the replay window, the key-exchange window less the
    /// clock skew (`FIBER_TIMESTAMP_SKEW_SECONDS`, the door's `max_timestamp_ahead`).
    pub fn fiber_handshake_timeout(&self) -> Duration {
        self.door.max_timestamp_age.saturating_sub(self.door.max_timestamp_ahead)
    }

    /// The rate limits in force: [`Config::rate_limits`] unless `RATE_LIMIT_ENABLED` is false
    /// (which `--dev` makes it when unset). The node starts the front door with these and a
    /// SIGHUP applies them; `door.rate_limits` is left `None` in the configuration, since whether
    /// they apply is known only then.
    pub fn active_rate_limits(&self) -> Option<&RateLimitSettings> {
        self.rate_limit_enabled.unwrap_or(true).then_some(&self.rate_limits)
    }

    /// The chain endpoint: `SUBTENSOR_ADDRESS`, else the `SUBTENSOR_NETWORK` preset.
    pub fn chain_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.subtensor_address {
            return Ok(url.clone());
        }
        loosh_actors::settings::network_url(&self.subtensor_network).map(String::from).ok_or_else(|| ConfigError {
            var: "SUBTENSOR_NETWORK",
            value: self.subtensor_network.clone(),
            expected: "finney, test or local (or set SUBTENSOR_ADDRESS)".into(),
        })
    }
}

#[cfg(test)]
mod tests;
