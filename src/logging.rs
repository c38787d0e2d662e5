//! Logs: `LOG_LEVEL` (Python names accepted), stdout, and `LOG_FILE` when set — that exact file,
//! rotated by size or by day (`LOG_ROTATION`) with `LOG_MAX_FILES` old ones kept; `LOG_FORMAT=json`
//! writes one JSON object per line to both, for journald, Docker and log shippers.

use std::path::PathBuf;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// The `LOG_FILE` writer and its rotation.
pub mod rotating_file;

pub use rotating_file::Rotation;

/// Keeps the file writer's background thread alive; drop it last.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// `LOG_FILE` with its rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub rotation: Rotation,
    /// Old files kept beside the live one.
    pub max_files: usize,
}

/// Maps Python's level names (INFO, WARNING, CRITICAL) to tracing's.
fn level(name: &str) -> &'static str {
    match name.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        _ => "info",
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;
type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::layer::Layered<Vec<BoxedLayer>, Registry>>;

/// The installed filter, swapped by [`set_level`] on a configuration reload.
static FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

fn filter_for(log_level: &str) -> EnvFilter {
    // RUST_LOG, when set, wins (for per-module debugging); llama.cpp's chatter stays at warn.
    // actix-http's HTTP/1 dispatcher logs an ERROR for every request a peer garbles ("stream
    // error: request parse error"): anyone could fill the log with them (`loosh-bench attack`'s
    // malformed flood wrote hundreds), so they are off; the peer still gets its 400.
    EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},llama_cpp_2=warn,llama-cpp-2=warn,actix_http::h1::dispatcher=off", level(log_level)))
    })
}

/// Changes `LOG_LEVEL` in the running process (SIGHUP).
pub fn set_level(log_level: &str) -> Result<(), String> {
    let handle = FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(filter_for(log_level)).map_err(|e| e.to_string())
}

/// Logs to stdout only (the subcommands that print their own report).
pub fn init_console(log_level: &str) -> LogGuard {
    init(log_level, None, false).unwrap_or(LogGuard(None))
}

/// Installs the global subscriber; fails only when `LOG_FILE` cannot be opened.
pub fn init(log_level: &str, log_file: Option<&LogFile>, json: bool) -> std::io::Result<LogGuard> {
    let (filter, handle) = reload::Layer::new(filter_for(log_level));
    let mut layers: Vec<BoxedLayer> = Vec::new();
    layers.push(if json {
        fmt::layer().json().flatten_event(true).boxed()
    } else {
        fmt::layer().with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).boxed()
    });
    let mut guard = None;
    if let Some(file) = log_file {
        let writer = rotating_file::RotatingFile::open(&file.path, file.rotation, file.max_files)?;
        let (writer, g) = tracing_appender::non_blocking(writer);
        guard = Some(g);
        layers.push(if json {
            fmt::layer().json().flatten_event(true).with_writer(writer).boxed()
        } else {
            fmt::layer().with_ansi(false).with_writer(writer).boxed()
        });
    }
    if tracing_subscriber::registry().with(layers).with(filter).try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
    Ok(LogGuard(guard))
}

/// An engine child's log: plain lines on stderr, no time (its worker logs each line with its own
/// time and the worker's name). `LOG_LEVEL` and `RUST_LOG` apply as in the node.
pub fn init_engine_child() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let level = level(&std::env::var("LOG_LEVEL").unwrap_or_default());
        EnvFilter::new(format!("{level},llama_cpp_2=warn,llama-cpp-2=warn"))
    });
    let stderr = fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(false).without_time();
    let _ = tracing_subscriber::registry().with(filter).with(stderr).try_init();
}
