//! The `loosh-miner` command: parses the command line, runs the subcommand (each in
//! `commands/`, the node's SIGHUP in `reload.rs`) and maps a failed start to the exit status that
//! tells a service manager whether a restart can help.

mod commands;
mod reload;

use clap::{Parser, Subcommand};
use loosh_miner::{registration, wallet};

#[derive(Parser)]
#[command(name = "loosh-miner", version, about = "Bittensor subnet 78 (Loosh) miner")]
struct Cli {
    /// Local development: an ephemeral hotkey, no wallet, no chain.
    #[arg(long, global = true)]
    dev: bool,
    /// The configuration file (`.env` syntax), read instead of `./.env` and `/workspace/.env` and
    /// re-read on SIGHUP; also `ENV_FILE`. The environment still wins over it.
    #[arg(long, global = true, value_name = "FILE")]
    env_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the miner (the default).
    Run,
    /// Act as a validator against a miner and report each step.
    Probe {
        /// The miner's base URL, e.g. http://1.2.3.4:8000
        url: String,
        #[arg(long, default_value = "What is the capital of France? Answer in one sentence.")]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        /// Hex mini-secret seed of the validator hotkey to use (default: a random one).
        #[arg(long)]
        validator_seed: Option<String>,
    },
    /// Post the axon address to the chain (serve_axon), like fiber-post-ip.
    PostIp {
        #[arg(long)]
        external_ip: std::net::IpAddr,
        #[arg(long)]
        external_port: u16,
    },
    /// Check wallet, chain, registration, axon, clock and workers; one line each, with the fix.
    Doctor,
    /// One table of the running miner: validators (stake, last seen, ok/err, p50), workers
    /// (device, phase, tokens/s, restarts) and chain (block, uid, incentive, axon).
    Status,
    /// Ask the running miner's `/health` (where METRICS_HOST/METRICS_PORT say); exit status 0 when
    /// it answers. Docker's HEALTHCHECK runs it.
    Health,
    /// Print the configuration as resolved from the environment and `.env` (what each setting
    /// means here, and where that differs from the Python miner), then exit; status 1 when invalid.
    Config,
    /// One embedded engine in a process of its own, driven by its worker over stdin/stdout
    /// (started by the node; see `loosh_miner::node::run_engine_child`).
    #[command(name = "engine-child", hide = true)]
    EngineChild,
}

/// `EX_CONFIG` (sysexits.h): the configuration is wrong and no restart helps; the systemd unit's
/// `RestartPreventExitStatus` and the PM2 file's `stop_exit_codes` name it. Any other failure
/// exits 1 (or [`EXIT_SOFTWARE`]) and is restarted.
const EXIT_CONFIG: i32 = 78;

/// `EX_SOFTWARE` (sysexits.h): a core actor (the scheduler, the key registry, the worker
/// supervisor, a chain actor) crashed more often than its restart policy allows, or the actor
/// graph's root failed. The node stopped answering; systemd's `Restart=on-failure` (or PM2)
/// starts a fresh process.
const EXIT_SOFTWARE: i32 = 70;

/// Whether a failed start is the configuration's fault: a restart with the same file fails again.
fn is_configuration_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<loosh_miner::config::ConfigError>()
            || cause.is::<wallet::WalletError>()
            || cause.downcast_ref::<registration::StartError>().is_some_and(registration::StartError::is_configuration)
            || cause.downcast_ref::<loosh_miner::node::ListenError>().is_some_and(|e| e.is_configuration())
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(path) = cli.env_file.clone() {
        loosh_miner::config::set_env_file(path);
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match commands::run::run(cli.dev) {
            Err(e) if is_configuration_error(&e) => {
                tracing::error!("configuration error, not restarting (exit {EXIT_CONFIG}): {e:#}");
                eprintln!("Error: {e:?}");
                std::process::exit(EXIT_CONFIG);
            }
            Err(e) if e.is::<loosh_actors::front_door::GraphFailure>() => {
                eprintln!("Error: {e:?} (exit {EXIT_SOFTWARE})");
                std::process::exit(EXIT_SOFTWARE);
            }
            other => other,
        },
        Command::Probe { url, prompt, max_tokens, validator_seed } => {
            commands::probe::run(url, prompt, max_tokens, validator_seed)
        }
        Command::EngineChild => loosh_miner::node::run_engine_child(),
        Command::Doctor => commands::doctor::run(),
        Command::Status => commands::status::run(),
        Command::Health => commands::health::run(),
        Command::Config => commands::config::run(),
        Command::PostIp { external_ip, external_port } => commands::post_ip::run(external_ip, external_port),
    }
}
