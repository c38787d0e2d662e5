//! [`Config::from_source`]: the variables read into a [`Config`]. The engine's and the HTTP
//! server's sections are read in `sections`; what only the node uses (network, wallet, backends,
//! validators, logs) is read here.

use std::path::PathBuf;
use std::time::Duration;

use super::sections::{chain, door, http, rate_limits, scheduler, sessions};
use super::source::{checked, Source};
use super::workers::{parse_workers, WorkerConfig};
use super::{Config, ConfigError, EngineProcessPolicy, LlmBackend};

impl Config {
    /// Reads every variable from `src`, with its default where unset; a value that does not read
    /// is an error naming its variable. Checks across variables are [`Config::validate`]'s.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let (llm_backend, llm_backend_name) = backend(src)?;
        let scheduler = scheduler(src)?;
        let api_port: u16 = src.parse("API_PORT", 8000, "a TCP port (1-65535)")?;
        let (rate_limit_enabled, rate_limits) = rate_limits(src)?;
        let (wallet_name, hotkey_name) = (src.string("WALLET_NAME", "miner"), src.string("HOTKEY_NAME", "miner"));
        let gpu_layers = if cfg!(feature = "cuda") { 999 } else { 0 };
        Ok(Self {
            sessions: sessions(src)?,
            door: door(src, scheduler.max_in_flight)?,
            scheduler,
            http: http(src)?,
            chain: chain(src, api_port)?,
            subtensor_network: src.string("SUBTENSOR_NETWORK", "finney"),
            subtensor_address: src.get("SUBTENSOR_ADDRESS").map(String::from),
            wallet_path: wallet_path(src, &wallet_name, &hotkey_name),
            wallet_name,
            hotkey_name,
            api_host: src.string("API_HOST", "0.0.0.0"),
            api_port,
            http_workers: src.parse("HTTP_WORKERS", 2, "a whole number of at least 1")?.max(1),
            rate_limit_enabled,
            rate_limits,
            llm_backend,
            llm_backend_name,
            default_model: src.string("DEFAULT_MODEL", "Qwen/Qwen2.5-32B-Instruct"),
            model_path: src.get("MODEL_PATH").map(PathBuf::from),
            max_model_len: src.parse("MAX_MODEL_LEN", 8192, "a number of tokens (0 = the model's own)")?,
            llama_threads: src.parse("LLAMA_THREADS", default_threads(), "a whole number of threads")?.max(1),
            llama_gpu_layers: src.parse("LLAMA_GPU_LAYERS", gpu_layers, "a number of layers")?,
            llama_batch: src.parse("LLAMA_BATCH", 512, "a number of tokens")?,
            engine_stall_after: engine_stall_after(src)?,
            engine_process: engine_process(src)?,
            engine_exe: src.get("ENGINE_EXE").map(PathBuf::from),
            llama_parallel: src.parse("LLAMA_PARALLEL", 0, "a number of sequences (0 = automatic)")?,
            workers: workers(src)?,
            // The Python miner's default: its own API is on 8000, vLLM beside it on 8001.
            vllm_api_base: src.string("VLLM_API_BASE", "http://localhost:8001/v1"),
            llamacpp_api_base: src.string("LLAMACPP_API_BASE", "http://localhost:8080/v1"),
            ollama_base_url: src.string("OLLAMA_BASE_URL", "http://localhost:11434"),
            ollama_timeout: Duration::from_secs_f64(src.parse::<f64>("OLLAMA_TIMEOUT", 300.0, "seconds")?.max(1.0)),
            openai_api_key: src.get("OPENAI_API_KEY").map(loosh_actors::settings::Secret::new),
            openai_max_model_len: match src.parse("OPENAI_MAX_MODEL_LEN", 0u32, "a number of tokens (0 = unknown)")? {
                0 => None,
                n => Some(n),
            },
            enable_validator_whitelist: src.boolean("ENABLE_VALIDATOR_WHITELIST", true)?,
            validator_hotkeys: hotkeys(src, "VALIDATOR_HOTKEYS"),
            validator_deny_hotkeys: hotkeys(src, "VALIDATOR_DENY_HOTKEYS"),
            strict_validator_addresses: src.boolean("STRICT_VALIDATOR_ADDRESSES", false)?,
            challenge_api_url: src.get("CHALLENGE_API_URL").map(|s| s.trim_end_matches('/').to_string()),
            challenge_api_poll: src.secs("CHALLENGE_API_POLL_SECONDS", 300)?.max(Duration::from_secs(10)),
            // An explicit opt-in on every network, local included: a miner that lets everyone in
            // because a read came back empty is the failure this setting exists to prevent.
            allow_all_when_empty: src.boolean("ALLOW_ALL_WHEN_EMPTY", false)?,
            log_level: src.string("LOG_LEVEL", "INFO"),
            log_file: log_file(src)?,
            log_json: log_json(src)?,
            unused_settings: not_acted_on(src),
        })
    }
}

/// `LLM_BACKEND` as read (the name, lower case, is kept for saying what it means here).
fn backend(src: &Source) -> Result<(LlmBackend, String), ConfigError> {
    let name = src.string("LLM_BACKEND", "llamacpp").to_ascii_lowercase();
    let backend = match name.as_str() {
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
    Ok((backend, name))
}

/// The hotkey file: `WALLET_PATH` is the Python miner's Docker set-up's name for the wallets
/// directory (`BITTENSOR_WALLET_PATH` wins over it; `~/.bittensor/wallets` by default).
fn wallet_path(src: &Source, wallet_name: &str, hotkey_name: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let wallets = src
        .get("BITTENSOR_WALLET_PATH")
        .or_else(|| src.get("WALLET_PATH"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(home).join(".bittensor/wallets"));
    wallets.join(wallet_name).join("hotkeys").join(hotkey_name)
}

/// `ENGINE_STALL_SECONDS`, above 0 (fractions allowed).
fn engine_stall_after(src: &Source) -> Result<Duration, ConfigError> {
    let secs: f64 = src.parse("ENGINE_STALL_SECONDS", 30.0, "a number of seconds")?;
    // try_from: NaN, negative and infinite values are errors, not a panic.
    let stall = Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero());
    checked("ENGINE_STALL_SECONDS", secs, stall.is_some(), "a number of seconds above 0")?;
    Ok(stall.unwrap_or_default())
}

/// `ENGINE_PROCESS`: gpu (the default), always or never.
fn engine_process(src: &Source) -> Result<EngineProcessPolicy, ConfigError> {
    match src.get("ENGINE_PROCESS").map(str::to_ascii_lowercase).as_deref() {
        None | Some("gpu") => Ok(EngineProcessPolicy::Gpu),
        Some("always") => Ok(EngineProcessPolicy::Always),
        Some("never") => Ok(EngineProcessPolicy::Never),
        Some(v) => Err(ConfigError { var: "ENGINE_PROCESS", value: v.into(), expected: "gpu, always or never".into() }),
    }
}

/// The explicit worker list: `WORKERS`, else the file `WORKERS_FILE` names.
fn workers(src: &Source) -> Result<Option<Vec<WorkerConfig>>, ConfigError> {
    match (src.get("WORKERS"), src.get("WORKERS_FILE")) {
        (Some(text), _) => Ok(Some(parse_workers(text)?)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                var: "WORKERS_FILE",
                value: path.into(),
                expected: format!("a readable JSON file ({e})"),
            })?;
            Ok(Some(parse_workers(&text)?))
        }
        (None, None) => Ok(None),
    }
}

/// A comma-separated list of hotkeys (checked by [`Config::validate`]).
fn hotkeys(src: &Source, var: &str) -> Vec<String> {
    src.get(var)
        .map(|s| s.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect())
        .unwrap_or_default()
}

/// `LOG_FILE` with `LOG_ROTATION` and `LOG_MAX_FILES`; unset, the log goes to standard output only.
fn log_file(src: &Source) -> Result<Option<crate::logging::LogFile>, ConfigError> {
    let Some(path) = src.get("LOG_FILE") else {
        return Ok(None);
    };
    let text = src.string("LOG_ROTATION", "daily");
    let rotation = crate::logging::Rotation::parse(&text).ok_or_else(|| ConfigError {
        var: "LOG_ROTATION",
        value: text.clone(),
        expected: "daily, never, or a size such as 100MB".into(),
    })?;
    let max_files = src.parse("LOG_MAX_FILES", 7, "a number of old files to keep")?;
    Ok(Some(crate::logging::LogFile { path: PathBuf::from(path), rotation, max_files }))
}

/// `LOG_FORMAT`: text (or plain) or json.
fn log_json(src: &Source) -> Result<bool, ConfigError> {
    match src.string("LOG_FORMAT", "text").to_ascii_lowercase().as_str() {
        "text" | "plain" => Ok(false),
        "json" => Ok(true),
        other => Err(ConfigError { var: "LOG_FORMAT", value: other.into(), expected: "text or json".into() }),
    }
}

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

/// The variables of [`NOT_ACTED_ON`] that are set, each with why it is not acted on.
fn not_acted_on(src: &Source) -> Vec<(String, String)> {
    NOT_ACTED_ON.iter().filter_map(|(var, why)| src.get(var).map(|_| (var.to_string(), why.to_string()))).collect()
}

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
