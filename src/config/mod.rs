//! The node's configuration: the Python miner's `.env` variables (same names, same meaning) plus
//! ours, loaded once from the environment, then the file named by `--env-file` / `ENV_FILE`, or else
//! `./.env` and `/workspace/.env` (in that order of precedence), validated at start with messages
//! that name the variable.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::http::state::DEFAULT_KEEP_ALIVE_SECS;

/// Which backend workers the node runs (`WORKERS`, or what the Python miner's variables imply).
pub mod workers;

/// `.env` files read as python-dotenv reads them.
pub mod dotenv;

/// The environment and `.env` files, and the typed readers of a variable's text.
mod source;

/// The configuration in words: the start-up summary and the differences from the Python miner.
mod summary;

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
    // Network and wallet
    pub netuid: u16,
    pub subtensor_network: String,
    pub subtensor_address: Option<String>,
    pub wallet_name: String,
    pub hotkey_name: String,
    pub wallet_path: PathBuf,
    // HTTP
    pub api_host: String,
    pub api_port: u16,
    pub http_workers: usize,
    pub max_body_bytes: usize,
    /// `MAX_KEY_EXCHANGE_BYTES`: a key exchange is a few hundred bytes of JSON.
    pub max_key_exchange_bytes: usize,
    /// `BODY_READ_TIMEOUT_SECONDS`: a request body must arrive whole within this.
    pub body_read_timeout: Duration,
    /// `HEADER_READ_TIMEOUT_SECONDS`: request headers must arrive within this.
    pub header_read_timeout: Duration,
    /// `KEEP_ALIVE_SECONDS`: idle keep-alive connections close after this. 75 s (nginx's default),
    /// well past the validator's httpx pool expiry of 5 s: a server that closes at the client's own
    /// expiry races its reuse, and the request lost to that race is a challenge lost.
    pub keep_alive: Duration,
    /// `MAX_CONNECTIONS`: open connections across the server.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_ADDRESS`: connections one address may hold unless a validator has
    /// proven itself from it (see `http::connections`).
    pub max_connections_per_address: usize,
    /// `RSA_SLOTS`: RSA private-key operations at once; a key exchange past them gets 503.
    pub rsa_slots: usize,
    /// `SIGNATURE_SLOTS`: sr25519 verifications at once; a key exchange past them gets 503.
    pub verify_slots: usize,
    /// `RATE_LIMIT_ENABLED`: unset means on, except under `--dev` (see `main`).
    pub rate_limit_enabled: Option<bool>,
    /// `RATE_LIMITS` over the Python miner's per-IP defaults, and `HOTKEY_RATE_LIMIT_PER_MINUTE`.
    pub rate_limits: loosh_actors::settings::RateLimitSettings,
    /// `MAX_IN_FLIGHT_PER_VALIDATOR`: challenges one validator may have in flight (default three
    /// quarters of `MAX_CONCURRENT_REQUESTS`), so that one hotkey cannot take every slot.
    pub max_in_flight_per_validator: usize,
    pub enable_inference_endpoint: bool,
    /// `ENABLE_API_DOCS`: `/openapi.json`, `/docs` and `/redoc` on the public port (off by default).
    pub enable_api_docs: bool,
    /// `METRICS_HOST`: where `/health` and `/metrics` listen (loopback by default).
    pub metrics_host: String,
    /// `METRICS_PORT`: their port (0 picks a free one; `off` serves them nowhere of their own).
    pub metrics_port: Option<u16>,
    /// `METRICS_ON_PUBLIC_PORT`: also serve them on `API_PORT`, to anyone.
    pub metrics_on_public_port: bool,
    /// `HEALTH_GRACE_SECONDS`: `/health` is 503 once no worker has been ready this long (the
    /// default covers a large model's load).
    pub health_grace: Duration,
    // Inference
    pub llm_backend: LlmBackend,
    /// `LLM_BACKEND` as written (lower case), for saying what it means here.
    pub llm_backend_name: String,
    pub default_model: String,
    pub default_max_tokens: u32,
    pub default_temperature: f32,
    pub default_top_p: f32,
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
    pub challenge_deadline: Duration,
    pub max_concurrent_requests: usize,
    /// `OPENAI_MAX_MODEL_LEN`: the context length of OpenAI-compatible servers that do not report
    /// one in `GET /models` (llama-cpp-python, Ollama); `max_tokens` is clamped to it.
    pub openai_max_model_len: Option<u32>,
    /// `TOOL_CALL_TEXT`: an answer that is only tool calls also states them in `response_text`
    /// (the validator reads only the text). Off by default: peers on vLLM's hermes parser answer a
    /// tool-only call with `""`, which the quality filter drops, so a sentence of ours would be the
    /// lone survivor (θ = 0, a zero sample) — a 502 adds no sample at all (SCORING.md).
    pub tool_call_text: bool,
    /// `TIME_AWARE_ADMISSION`: refuse at once a challenge no worker can start in time to answer usefully.
    pub time_aware_admission: bool,
    /// `ADMISSION_MIN_TOKENS`: the tokens a useful answer needs before the deadline.
    pub admission_min_tokens: u32,
    /// `ADMISSION_MAX_WAIT_MS` (0: off): the longest expected wait for a sequence, and the most a
    /// new sequence may slow a running challenge, before a challenge is refused (503).
    pub admission_max_wait: Option<Duration>,
    /// `ADMISSION_KEEP_SAMPLE_MINUTES`: a validator without an answer for this long has its next
    /// challenge taken past the wait cap.
    pub admission_keep_sample: Duration,
    /// `HEDGING`: race a challenge whose first token is late on an idle sibling.
    pub hedging: bool,
    /// `HEDGE_AFTER_FACTOR` x the median recent time to first token, at least `HEDGE_MIN_MS`.
    pub hedge_after_factor: f64,
    pub hedge_min: Duration,
    // Protocol
    pub fiber_key_ttl: Duration,
    pub fiber_key_grace: Duration,
    pub fiber_handshake_timeout: Duration,
    pub fiber_timestamp_skew: Duration,
    pub enable_validator_whitelist: bool,
    pub validator_hotkeys: Vec<String>,
    /// `VALIDATOR_DENY_HOTKEYS`: refused whatever else allows them.
    pub validator_deny_hotkeys: Vec<String>,
    /// `STRICT_VALIDATOR_ADDRESSES`: a validator may exchange keys only from the addresses the
    /// Challenge API (and the chain) report for it; anything else gets 403 (off by default).
    pub strict_validator_addresses: bool,
    /// `TRUSTED_PROXIES`: the reverse proxies whose `X-Forwarded-For` names the client. Empty
    /// (the default): the header is never read, since anyone can write it.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub challenge_api_url: Option<String>,
    pub challenge_api_poll: Duration,
    // Chain
    pub metagraph_sync_blocks: u64,
    pub chain_poll: Duration,
    /// Minimum alpha stake of a validator, in rao.
    pub min_validator_stake: u64,
    pub allow_all_when_empty: bool,
    /// `AXON_EXTERNAL_IP` / `AXON_EXTERNAL_PORT`: the address the node posts itself.
    pub axon_external: Option<(std::net::IpAddr, u16)>,
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
/// list (unchanged workers keep running; see `MinerGraph::set_workers`). `MAX_CONCURRENT_REQUESTS`
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

/// Variables of the Python miner that this build accepts but does not act on, and why.
const NOT_ACTED_ON: &[(&str, &str)] = &[
    ("AXON_PORT", "the axon is served on API_PORT"),
    ("TENSOR_PARALLEL_SIZE", "passed to vLLM by the Python miner's launcher, not used by the embedded engine"),
    ("GPU_MEMORY_UTILIZATION", "a vLLM launch setting, not used by the embedded engine"),
    (
        "FIBER_ENABLE_KEY_ROTATION",
        "validators rotate keys by re-handshaking; keys always expire after FIBER_KEY_TTL_SECONDS",
    ),
    ("CHALLENGE_API_KEY", "deprecated in the Python miner too"),
    ("VLLM_ENABLE_AUTO_TOOL_CHOICE", "a vLLM launch setting"),
    ("VLLM_TOOL_CALL_PARSER", "a vLLM launch setting"),
    ("VLLM_ENABLE_PREFIX_CACHING", "a vLLM launch setting"),
    ("VLLM_MAX_NUM_SEQS", "a vLLM launch setting"),
    ("VLLM_MAX_NUM_BATCHED_TOKENS", "a vLLM launch setting"),
];

/// `LLAMA_THREADS`' default: physical cores, but no more than this process may run on at once.
/// Hyper-threads hurt llama.cpp (its threads spin-wait), so cores, not logical CPUs; and a CPU
/// affinity mask (`taskset`) or a cgroup quota (`docker --cpus=8`) that std's
/// `available_parallelism` sees caps it, or 64 spinning threads share 8 CPUs.
pub fn default_threads() -> i32 {
    let allowed = std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(1);
    physical_cores().map_or(allowed, |cores| cores.min(allowed)).max(1)
}

/// Distinct (package, core) pairs of `/proc/cpuinfo`; `None` where it does not list them.
fn physical_cores() -> Option<i32> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut cores = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in cpuinfo.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']).parse::<u32>().ok();
        } else if let Some(v) = line.strip_prefix("core id") {
            core = v.trim_start_matches([' ', '\t', ':']).parse::<u32>().ok();
        } else if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                cores.insert((p, c));
            }
        }
    }
    (!cores.is_empty()).then_some(cores.len() as i32)
}

impl Config {
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let llm_backend_name = src.string("LLM_BACKEND", "llamacpp").to_ascii_lowercase();
        let llm_backend = match llm_backend_name.as_str() {
            // The Python miner's `llamacpp` is a client of a llama.cpp server; a model file named
            // in MODEL_PATH is what asks for the engine in process instead.
            "llamacpp" | "llama.cpp" if src.get("MODEL_PATH").is_none() => LlmBackend::LlamaCppServer,
            "llamacpp" | "llama.cpp" | "embedded" => LlmBackend::Embedded,
            "vllm" => LlmBackend::Vllm,
            "ollama" => LlmBackend::Ollama,
            other => {
                return Err(ConfigError {
                    var: "LLM_BACKEND",
                    value: other.into(),
                    expected: "llamacpp, vllm or ollama".into(),
                })
            }
        };
        let temperature: f32 = src.parse("DEFAULT_TEMPERATURE", 0.7, "a number from 0 to 2")?;
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ConfigError {
                var: "DEFAULT_TEMPERATURE",
                value: temperature.to_string(),
                expected: "a number from 0 to 2".into(),
            });
        }
        let top_p: f32 = src.parse("DEFAULT_TOP_P", 0.95, "a number in (0, 1]")?;
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ConfigError {
                var: "DEFAULT_TOP_P",
                value: top_p.to_string(),
                expected: "a number in (0, 1]".into(),
            });
        }
        let max_concurrent: usize = src.parse("MAX_CONCURRENT_REQUESTS", 10, "a whole number of at least 1")?;
        if max_concurrent == 0 {
            return Err(ConfigError {
                var: "MAX_CONCURRENT_REQUESTS",
                value: "0".into(),
                expected: "a whole number of at least 1".into(),
            });
        }
        let deadline_ms: u64 = src.parse("CHALLENGE_DEADLINE_MS", 50_000, "milliseconds, from 1000 to 59000")?;
        if !(1000..=59_000).contains(&deadline_ms) {
            return Err(ConfigError {
                var: "CHALLENGE_DEADLINE_MS",
                value: deadline_ms.to_string(),
                expected: "milliseconds, from 1000 to 59000 (the validator cancels at 60 s)".into(),
            });
        }
        let ttl = src.secs("FIBER_KEY_TTL_SECONDS", 3600)?;
        if ttl.is_zero() {
            return Err(ConfigError {
                var: "FIBER_KEY_TTL_SECONDS",
                value: "0".into(),
                expected: "at least 1 second".into(),
            });
        }
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let api_port: u16 = src.parse("API_PORT", 8000, "a TCP port (1-65535)")?;
        let wallet_name = src.string("WALLET_NAME", "miner");
        let hotkey_name = src.string("HOTKEY_NAME", "miner");
        // WALLET_PATH is the Python miner's Docker set-up's name for the wallets directory.
        let wallets = src
            .get("BITTENSOR_WALLET_PATH")
            .or_else(|| src.get("WALLET_PATH"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(home).join(".bittensor/wallets"));
        let unused_settings = NOT_ACTED_ON
            .iter()
            .filter_map(|(var, why)| src.get(var).map(|_| (var.to_string(), why.to_string())))
            .collect();
        Ok(Self {
            netuid: src.parse("NETUID", 78, "a subnet number (0-65535)")?,
            subtensor_network: src.string("SUBTENSOR_NETWORK", "finney"),
            subtensor_address: src.get("SUBTENSOR_ADDRESS").map(String::from),
            wallet_path: wallets.join(&wallet_name).join("hotkeys").join(&hotkey_name),
            wallet_name,
            hotkey_name,
            api_host: src.string("API_HOST", "0.0.0.0"),
            api_port,
            http_workers: src.parse("HTTP_WORKERS", 2, "a whole number of at least 1")?.max(1),
            max_body_bytes: src.parse("MAX_BODY_BYTES", 2 * 1024 * 1024, "a number of bytes")?,
            max_key_exchange_bytes: src.parse("MAX_KEY_EXCHANGE_BYTES", 8 * 1024, "a number of bytes")?.max(1024),
            body_read_timeout: src.secs("BODY_READ_TIMEOUT_SECONDS", 10)?.max(Duration::from_secs(1)),
            header_read_timeout: src.secs("HEADER_READ_TIMEOUT_SECONDS", 5)?.max(Duration::from_secs(1)),
            keep_alive: src.secs("KEEP_ALIVE_SECONDS", DEFAULT_KEEP_ALIVE_SECS)?,
            max_connections: src.parse("MAX_CONNECTIONS", 2048, "a number of connections (at least 1)")?.max(1),
            max_connections_per_address: src
                .parse("MAX_CONNECTIONS_PER_ADDRESS", 64, "a number of connections (at least 1)")?
                .max(1),
            rsa_slots: src
                .parse("RSA_SLOTS", loosh_actors::settings::DEFAULT_RSA_SLOTS, "a whole number of at least 1")?
                .max(1),
            verify_slots: src.parse("SIGNATURE_SLOTS", 4, "a whole number of at least 1")?.max(1),
            rate_limit_enabled: match src.get("RATE_LIMIT_ENABLED") {
                None => None,
                Some(_) => Some(src.boolean("RATE_LIMIT_ENABLED", true)?),
            },
            rate_limits: {
                let mut limits = loosh_actors::settings::RateLimitSettings::default();
                if let Some(text) = src.get("RATE_LIMITS") {
                    limits.apply(text).map_err(|expected| ConfigError {
                        var: "RATE_LIMITS",
                        value: text.into(),
                        expected,
                    })?;
                }
                limits.per_hotkey = src
                    .parse("HOTKEY_RATE_LIMIT_PER_MINUTE", limits.per_hotkey, "a whole number per minute (at least 1)")?
                    .max(1);
                limits
            },
            max_in_flight_per_validator: src
                .parse(
                    "MAX_IN_FLIGHT_PER_VALIDATOR",
                    // Three quarters: a busy validator still fills most of the node, and a quarter
                    // stays for the others.
                    max_concurrent - max_concurrent / 4,
                    "a number of challenges (at least 1)",
                )?
                .max(1),
            enable_inference_endpoint: src.boolean("ENABLE_INFERENCE_ENDPOINT", false)?,
            enable_api_docs: src.boolean("ENABLE_API_DOCS", false)?,
            metrics_host: src.string("METRICS_HOST", "127.0.0.1"),
            metrics_port: match src.get("METRICS_PORT") {
                Some(v) if v.eq_ignore_ascii_case("off") => None,
                _ => Some(src.parse("METRICS_PORT", DEFAULT_METRICS_PORT, "a TCP port, or off")?),
            },
            metrics_on_public_port: src.boolean("METRICS_ON_PUBLIC_PORT", false)?,
            health_grace: src.secs("HEALTH_GRACE_SECONDS", 300)?,
            llm_backend,
            llm_backend_name,
            default_model: src.string("DEFAULT_MODEL", "Qwen/Qwen2.5-32B-Instruct"),
            default_max_tokens: src.parse("DEFAULT_MAX_TOKENS", 512, "a whole number of tokens")?,
            default_temperature: temperature,
            default_top_p: top_p,
            model_path: src.get("MODEL_PATH").map(PathBuf::from),
            max_model_len: src.parse("MAX_MODEL_LEN", 8192, "a number of tokens (0 = the model's own)")?,
            llama_threads: src.parse("LLAMA_THREADS", default_threads(), "a whole number of threads")?.max(1),
            llama_gpu_layers: src.parse(
                "LLAMA_GPU_LAYERS",
                if cfg!(feature = "cuda") { 999 } else { 0 },
                "a number of layers",
            )?,
            llama_batch: src.parse("LLAMA_BATCH", 512, "a number of tokens")?,
            engine_stall_after: {
                let secs: f64 = src.parse("ENGINE_STALL_SECONDS", 30.0, "a number of seconds")?;
                // try_from: NaN, negative and infinite values are errors, not a panic.
                Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero()).ok_or_else(|| ConfigError {
                    var: "ENGINE_STALL_SECONDS",
                    value: secs.to_string(),
                    expected: "a number of seconds above 0".into(),
                })?
            },
            engine_process: match src.get("ENGINE_PROCESS").map(str::to_ascii_lowercase).as_deref() {
                None | Some("gpu") => EngineProcessPolicy::Gpu,
                Some("always") => EngineProcessPolicy::Always,
                Some("never") => EngineProcessPolicy::Never,
                Some(v) => {
                    return Err(ConfigError {
                        var: "ENGINE_PROCESS",
                        value: v.into(),
                        expected: "gpu, always or never".into(),
                    })
                }
            },
            engine_exe: src.get("ENGINE_EXE").map(PathBuf::from),
            llama_parallel: src.parse("LLAMA_PARALLEL", 0, "a number of sequences (0 = automatic)")?,
            workers: match (src.get("WORKERS"), src.get("WORKERS_FILE")) {
                (Some(text), _) => Some(crate::config::workers::parse_workers(text)?),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                        var: "WORKERS_FILE",
                        value: path.into(),
                        expected: format!("a readable JSON file ({e})"),
                    })?;
                    Some(crate::config::workers::parse_workers(&text)?)
                }
                (None, None) => None,
            },
            // The Python miner's default: its own API is on 8000, vLLM beside it on 8001.
            vllm_api_base: src.string("VLLM_API_BASE", "http://localhost:8001/v1"),
            llamacpp_api_base: src.string("LLAMACPP_API_BASE", "http://localhost:8080/v1"),
            ollama_base_url: src.string("OLLAMA_BASE_URL", "http://localhost:11434"),
            ollama_timeout: Duration::from_secs_f64(src.parse::<f64>("OLLAMA_TIMEOUT", 300.0, "seconds")?.max(1.0)),
            openai_api_key: src.get("OPENAI_API_KEY").map(loosh_actors::settings::Secret::new),
            challenge_deadline: Duration::from_millis(deadline_ms),
            max_concurrent_requests: max_concurrent,
            openai_max_model_len: match src.parse("OPENAI_MAX_MODEL_LEN", 0u32, "a number of tokens (0 = unknown)")? {
                0 => None,
                n => Some(n),
            },
            tool_call_text: src.boolean("TOOL_CALL_TEXT", false)?,
            time_aware_admission: src.boolean("TIME_AWARE_ADMISSION", true)?,
            admission_min_tokens: src.parse("ADMISSION_MIN_TOKENS", 48, "a number of tokens")?,
            admission_max_wait: match src.parse(
                "ADMISSION_MAX_WAIT_MS",
                loosh_actors::settings::DEFAULT_MAX_WAIT.as_millis() as u64,
                "milliseconds (0 = no cap)",
            )? {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            admission_keep_sample: {
                let default = loosh_actors::settings::DEFAULT_KEEP_SAMPLE_EVERY.as_secs() / 60;
                let minutes: u64 = src.parse("ADMISSION_KEEP_SAMPLE_MINUTES", default, "minutes (at least 1)")?;
                if minutes == 0 {
                    return Err(ConfigError {
                        var: "ADMISSION_KEEP_SAMPLE_MINUTES",
                        value: "0".into(),
                        expected: "minutes (at least 1)".into(),
                    });
                }
                Duration::from_secs(minutes * 60)
            },
            hedging: src.boolean("HEDGING", true)?,
            hedge_after_factor: {
                let f: f64 = src.parse("HEDGE_AFTER_FACTOR", 3.0, "a number of at least 1")?;
                if !(f >= 1.0 && f.is_finite()) {
                    return Err(ConfigError {
                        var: "HEDGE_AFTER_FACTOR",
                        value: f.to_string(),
                        expected: "a number of at least 1".into(),
                    });
                }
                f
            },
            hedge_min: Duration::from_millis(src.parse("HEDGE_MIN_MS", 500, "milliseconds")?),
            fiber_key_ttl: ttl,
            fiber_key_grace: src.secs("FIBER_KEY_GRACE_SECONDS", 60)?,
            fiber_handshake_timeout: src.secs("FIBER_HANDSHAKE_TIMEOUT_SECONDS", 30)?,
            fiber_timestamp_skew: src.secs("FIBER_TIMESTAMP_SKEW_SECONDS", 300)?,
            enable_validator_whitelist: src.boolean("ENABLE_VALIDATOR_WHITELIST", true)?,
            validator_hotkeys: src
                .get("VALIDATOR_HOTKEYS")
                .map(|s| s.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect())
                .unwrap_or_default(),
            validator_deny_hotkeys: src
                .get("VALIDATOR_DENY_HOTKEYS")
                .map(|s| s.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect())
                .unwrap_or_default(),
            strict_validator_addresses: src.boolean("STRICT_VALIDATOR_ADDRESSES", false)?,
            trusted_proxies: match src.get("TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(text) => text
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        t.parse().map_err(|_| ConfigError {
                            var: "TRUSTED_PROXIES",
                            value: text.to_string(),
                            expected: "comma-separated IP addresses of your reverse proxies".into(),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            challenge_api_url: src.get("CHALLENGE_API_URL").map(|s| s.trim_end_matches('/').to_string()),
            challenge_api_poll: src.secs("CHALLENGE_API_POLL_SECONDS", 300)?.max(Duration::from_secs(10)),
            metagraph_sync_blocks: src.parse("METAGRAPH_SYNC_BLOCKS", 10, "a number of blocks (at least 1)")?.max(1),
            chain_poll: src.secs("CHAIN_POLL_SECONDS", 12)?.max(Duration::from_secs(1)),
            min_validator_stake: {
                let alpha: f64 = src.parse("MIN_VALIDATOR_STAKE", 0.0, "an amount of alpha (>= 0)")?;
                if !(alpha >= 0.0 && alpha.is_finite()) {
                    return Err(ConfigError {
                        var: "MIN_VALIDATOR_STAKE",
                        value: alpha.to_string(),
                        expected: "an amount of alpha (>= 0)".into(),
                    });
                }
                (alpha * 1e9) as u64
            },
            // An explicit opt-in on every network, local included: a miner that lets everyone in
            // because a read came back empty is the failure this setting exists to prevent.
            allow_all_when_empty: src.boolean("ALLOW_ALL_WHEN_EMPTY", false)?,
            axon_external: match src.get("AXON_EXTERNAL_IP") {
                None => None,
                Some(ip) => {
                    let ip = ip.parse().map_err(|_| ConfigError {
                        var: "AXON_EXTERNAL_IP",
                        value: ip.into(),
                        expected: "an IPv4 or IPv6 address".into(),
                    })?;
                    let port = src.parse("AXON_EXTERNAL_PORT", api_port, "a TCP port (1-65535)")?;
                    Some((ip, port))
                }
            },
            log_level: src.string("LOG_LEVEL", "INFO"),
            log_file: match src.get("LOG_FILE") {
                None => None,
                Some(path) => Some(crate::logging::LogFile {
                    path: PathBuf::from(path),
                    rotation: {
                        let text = src.string("LOG_ROTATION", "daily");
                        crate::logging::Rotation::parse(&text).ok_or_else(|| ConfigError {
                            var: "LOG_ROTATION",
                            value: text.clone(),
                            expected: "daily, never, or a size such as 100MB".into(),
                        })?
                    },
                    max_files: src.parse("LOG_MAX_FILES", 7, "a number of old files to keep")?,
                }),
            },
            log_json: match src.string("LOG_FORMAT", "text").to_ascii_lowercase().as_str() {
                "text" | "plain" => false,
                "json" => true,
                other => {
                    return Err(ConfigError { var: "LOG_FORMAT", value: other.into(), expected: "text or json".into() })
                }
            },
            unused_settings,
        })
    }

    /// Checks that need the whole picture (hotkeys that parse, URLs); the workers are checked when
    /// their specs are built ([`crate::config::workers::worker_specs`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (var, list) in
            [("VALIDATOR_HOTKEYS", &self.validator_hotkeys), ("VALIDATOR_DENY_HOTKEYS", &self.validator_deny_hotkeys)]
        {
            for h in list {
                if loosh_actors::protocol::signature::ss58_decode(h).is_err() {
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
        self.fiber_handshake_timeout + self.fiber_timestamp_skew
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
