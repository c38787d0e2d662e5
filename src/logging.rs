//! Logs: `LOG_LEVEL` (Python names accepted), stdout, and `LOG_FILE` when set (daily rotation).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// Keeps the file writer's background thread alive; drop it last.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

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

pub fn init(log_level: &str, log_file: Option<&std::path::Path>) -> LogGuard {
    // RUST_LOG, when set, wins (for per-module debugging); llama.cpp's chatter stays at warn.
    // actix-http's HTTP/1 dispatcher logs an ERROR for every request a peer garbles ("stream
    // error: request parse error"): anyone could fill the log with them (`bench attack`'s
    // malformed flood wrote hundreds), so they are off; the peer still gets its 400.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},llama_cpp_2=warn,llama-cpp-2=warn,actix_http::h1::dispatcher=off", level(log_level)))
    });
    let stdout = fmt::layer().with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let (file_layer, guard) = match log_file {
        Some(path) => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "miner.log".into());
            let (writer, guard) = tracing_appender::non_blocking(tracing_appender::rolling::daily(dir, name));
            (Some(fmt::layer().with_ansi(false).with_writer(writer)), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(filter).with(stdout).with(file_layer).try_init();
    LogGuard(guard)
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
