//! One file per subcommand of `loosh-miner`; `main` parses the command line, calls one of them and
//! maps what it returns to an exit status. What several subcommands share (the logs, the
//! configuration as the node reads it) is here. The hidden `engine-child` has no file: it is the
//! node's own `loosh_miner::node::run_engine_child`, which `loosh-bench` answers too.

pub mod config;
pub mod doctor;
pub mod health;
pub mod post_ip;
pub mod probe;
pub mod run;
pub mod status;

use loosh_miner::config::{Config, Source};
use loosh_miner::logging;

/// Logging as configured. A `LOG_FILE` that cannot be created or appended to is a configuration
/// error: a restart opens the same path and fails the same way.
pub fn init_logs(cfg: &Config) -> Result<logging::LogGuard, loosh_miner::config::ConfigError> {
    logging::init(&cfg.log_level, cfg.log_file.as_ref(), cfg.log_json).map_err(|e| loosh_miner::config::ConfigError {
        var: "LOG_FILE",
        value: cfg.log_file.as_ref().map(|f| f.path.display().to_string()).unwrap_or_default(),
        expected: format!("a file the miner can create and append to ({e})"),
    })
}

/// The configuration as `run` uses it: `--dev` turns rate limits off unless they are set.
pub fn load_config(src: &Source, dev: bool) -> Result<Config, loosh_miner::config::ConfigError> {
    let mut cfg = Config::from_source(src)?;
    if dev && cfg.rate_limit_enabled.is_none() {
        // Local development drives the node from one address far harder than any validator.
        cfg.rate_limit_enabled = Some(false);
    }
    Ok(cfg)
}
