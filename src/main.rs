//! The `loosh-miner` command: run the node, probe a miner, or benchmark.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::protocol::signature::Hotkey;
#[cfg(feature = "bench")]
use loosh_miner::bench;
use loosh_miner::config::workers;
use loosh_miner::config::{Config, Source};
use loosh_miner::managed_server::ManagedServers;
use loosh_miner::node::{Node, NodeParts};
use loosh_miner::{chain, logging, ops_client, probe, wallet};

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
    /// Measure the miner against references in the same run (built with `--features bench`).
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// One embedded engine in a process of its own, driven by its worker over stdin/stdout
    /// (started by the node; see `loosh_actors::engine_host`).
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
            || cause.downcast_ref::<chain::StartError>().is_some_and(chain::StartError::is_configuration)
            || cause.downcast_ref::<loosh_miner::node::ListenError>().is_some_and(|e| e.is_configuration())
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(path) = cli.env_file.clone() {
        loosh_miner::config::set_env_file(path);
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match run(cli.dev) {
            Err(e) if is_configuration_error(&e) => {
                tracing::error!("configuration error, not restarting (exit {EXIT_CONFIG}): {e:#}");
                eprintln!("Error: {e:?}");
                std::process::exit(EXIT_CONFIG);
            }
            Err(e) if e.is::<loosh_actors::graph::GraphFailure>() => {
                eprintln!("Error: {e:?} (exit {EXIT_SOFTWARE})");
                std::process::exit(EXIT_SOFTWARE);
            }
            other => other,
        },
        Command::Probe { url, prompt, max_tokens, validator_seed } => {
            let validator_seed = validator_seed
                .map(|s| {
                    hex::decode(s.trim_start_matches("0x"))
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .context("--validator-seed must be 32 bytes of hex")
                })
                .transpose()?;
            let rt = tokio::runtime::Runtime::new()?;
            let ok = rt.block_on(probe::run(probe::ProbeOptions { url, prompt, max_tokens, validator_seed }));
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(args),
        Command::EngineChild => {
            // Its log goes to stderr, which the worker re-logs under the worker's name.
            logging::init_engine_child();
            std::process::exit(loosh_actors::engine_host::child::run_engine_child());
        }
        Command::Doctor => {
            let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
            let _log_guard = logging::init_console("error");
            let rt = tokio::runtime::Runtime::new()?;
            if !rt.block_on(loosh_miner::doctor::run(&cfg)) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Status => {
            let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
            print!("{}", loosh_miner::status::run(&cfg)?);
            Ok(())
        }
        Command::Health => {
            let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
            let addr = ops_client::ops_address(&cfg)?;
            let body = ops_client::get(&addr, "/health", std::time::Duration::from_secs(5))?;
            println!("{body}");
            Ok(())
        }
        Command::Config => {
            let src = Source::load();
            for line in &src.unreadable {
                println!("unreadable: {line} (skipped, as python-dotenv skips it)");
            }
            src.check_named_file().context("invalid configuration")?;
            let cfg = Config::from_source(&src).context("invalid configuration")?;
            cfg.validate().context("invalid configuration")?;
            for line in cfg.summary() {
                println!("{line}");
            }
            for line in cfg.python_differences() {
                println!("differs from the Python miner: {line}");
            }
            Ok(())
        }
        Command::PostIp { external_ip, external_port } => {
            let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
            let _log_guard = init_logs(&cfg)?;
            let hotkey = wallet::load_hotkey(&cfg.wallet_path)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(chain::post_ip(&cfg, &hotkey, external_ip, external_port))?;
            Ok(())
        }
    }
}

/// Logging as configured. A `LOG_FILE` that cannot be created or appended to is a configuration
/// error: a restart opens the same path and fails the same way.
fn init_logs(cfg: &Config) -> Result<logging::LogGuard, loosh_miner::config::ConfigError> {
    logging::init(&cfg.log_level, cfg.log_file.as_ref(), cfg.log_json).map_err(|e| loosh_miner::config::ConfigError {
        var: "LOG_FILE",
        value: cfg.log_file.as_ref().map(|f| f.path.display().to_string()).unwrap_or_default(),
        expected: format!("a file the miner can create and append to ({e})"),
    })
}

/// The configuration as `run` uses it: `--dev` turns rate limits off unless they are set.
fn load_config(src: &Source, dev: bool) -> Result<Config, loosh_miner::config::ConfigError> {
    let mut cfg = Config::from_source(src)?;
    if dev && cfg.rate_limit_enabled.is_none() {
        // Local development drives the node from one address far harder than any validator.
        cfg.rate_limit_enabled = Some(false);
    }
    Ok(cfg)
}

/// SIGHUP: re-reads the configuration file (`--env-file`, else `.env`) and `WORKERS_FILE`; applies
/// the lists, the rate limits, the log level and the workers (added, removed or changed ones; the
/// others keep running) without touching keys or in-flight challenges; names what needs a
/// restart, and says so when nothing changed. A configuration that does not load is refused whole
/// and the running one kept. (The process environment is fixed for its life: only a file reloads.)
async fn reload(
    dev: bool,
    old_src: &Source,
    old: &Config,
    node: &Node,
    auth: &ValidatorAuth,
    gpus: &[(usize, String)],
) -> Option<(Source, Config)> {
    let src = Source::load();
    for line in &src.unreadable {
        tracing::warn!("{line} could not be read; it sets nothing (as in python-dotenv)");
    }
    let loaded = src.check_named_file().and_then(|()| load_config(&src, dev)).and_then(|c| c.validate().map(|()| c));
    let (cfg, specs, servers) = match loaded.and_then(|c| {
        let specs = workers::worker_specs(&c, gpus)?;
        let servers = workers::managed_servers(&c)?;
        Ok((c, specs, servers))
    }) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration stays");
            return None;
        }
    };
    let mut changed = old_src.changed(&src);
    if old.workers != cfg.workers && !changed.iter().any(|v| v == "WORKERS") {
        changed.push("WORKERS_FILE".into());
    }
    // The servers the miner runs itself are started once; a changed command needs a restart.
    let servers_changed = workers::managed_servers(old).ok().as_ref() != Some(&servers);
    let (applied, mut restart): (Vec<String>, Vec<String>) = changed.into_iter().partition(|v| {
        loosh_miner::config::RELOADABLE.contains(&v.as_str()) || loosh_miner::config::WORKER_VARS.contains(&v.as_str())
    });
    if servers_changed {
        restart.push("WORKERS (a managed server's command)".into());
    }
    if applied.is_empty() && restart.is_empty() {
        tracing::info!(files = ?src.files, "configuration re-read (SIGHUP): nothing changed");
        return Some((src, cfg));
    }
    match node.graph.set_workers(specs).await {
        Ok(changes) if changes.added.len() + changes.removed.len() + changes.replaced.len() > 0 => {
            tracing::info!(added = ?changes.added, removed = ?changes.removed, replaced = ?changes.replaced, "workers changed");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "the new worker list was not applied"),
    }
    if cfg.log_level != old.log_level {
        if let Err(e) = logging::set_level(&cfg.log_level) {
            tracing::warn!(error = %e, "LOG_LEVEL not applied");
        }
    }
    if cfg.validator_hotkeys != old.validator_hotkeys {
        let listed = cfg.validator_hotkeys.iter().cloned().collect();
        node.graph.validators().replace(loosh_actors::authorization::Source::Static, listed);
    }
    if cfg.validator_deny_hotkeys != old.validator_deny_hotkeys {
        node.graph.validators().deny(cfg.validator_deny_hotkeys.iter().cloned().collect());
    }
    if cfg.strict_validator_addresses != old.strict_validator_addresses {
        auth.set_strict_addresses(cfg.strict_validator_addresses);
    }
    if (cfg.rate_limit_enabled, &cfg.rate_limits) != (old.rate_limit_enabled, &old.rate_limits) {
        node.graph.set_rate_limits(cfg.rate_limit_enabled.unwrap_or(true).then_some(&cfg.rate_limits));
    }
    tracing::info!(applied = ?applied, files = ?src.files, "configuration reloaded (SIGHUP)");
    if !restart.is_empty() {
        tracing::warn!("changed but applied only at the next restart: {}", restart.join(", "));
    }
    Some((src, cfg))
}

fn run(dev: bool) -> anyhow::Result<()> {
    let src = Source::load();
    let cfg = src.check_named_file().and_then(|()| load_config(&src, dev)).context("invalid configuration")?;
    let _log_guard = init_logs(&cfg)?;
    for line in &src.unreadable {
        tracing::warn!("{line} could not be read; it sets nothing (as in python-dotenv)");
    }
    cfg.validate().context("invalid configuration")?;
    for line in cfg.summary() {
        tracing::info!("{line}");
    }
    tracing::info!(files = ?src.files, "configuration files read (the environment wins over them)");
    raise_open_files_limit(&cfg);
    let differences = cfg.python_differences();
    if !differences.is_empty() {
        tracing::warn!("differs from the Python miner: {}", differences.join("; "));
    }

    let actors =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("actors").enable_all().build()?;
    let hotkey = if dev {
        tracing::warn!("--dev: using an ephemeral hotkey; no wallet is read and the chain is not contacted");
        Hotkey::ephemeral()
    } else {
        wallet::load_hotkey(&cfg.wallet_path)?
    };
    tracing::info!(hotkey = %hotkey.ss58(), "miner hotkey");
    // Checked before any model loads: a wrong network name is a configuration error.
    let chain_url = if dev { None } else { Some(cfg.chain_url().context("invalid configuration")?) };

    let auth = Arc::new(if dev && cfg.validator_hotkeys.is_empty() {
        tracing::warn!("--dev without VALIDATOR_HOTKEYS: every validator hotkey is admitted");
        ValidatorAuth::allow_all()
    } else {
        ValidatorAuth::with_policy(
            cfg.enable_validator_whitelist,
            cfg.allow_all_when_empty,
            cfg.validator_hotkeys.clone(),
        )
    });

    auth.set_denied(cfg.validator_deny_hotkeys.iter().cloned().collect());
    auth.set_strict_addresses(cfg.strict_validator_addresses);

    let gpus = loosh_actors::inference::embedded::gpu_devices();
    for (index, description) in &gpus {
        tracing::info!(device = index, %description, "GPU visible to llama.cpp");
    }
    let specs = workers::worker_specs(&cfg, &gpus).context("invalid configuration")?;
    for spec in &specs {
        tracing::info!(worker = %spec.name, device = %spec.device, engine = ?spec.engine, process = ?spec.process, "worker configured");
    }
    // The chain actors start once the chain has answered (below), so that a chain outage at boot
    // is waited out while serving `/availability: false`.
    let parts = NodeParts {
        hotkey: hotkey.clone(),
        workers: specs,
        auth: auth.clone(),
        chain_url: None,
        listen: (cfg.api_host.clone(), cfg.api_port),
    };
    // Registered once, before the first wait that a stop may interrupt, so that none is missed.
    let mut term = {
        let _runtime = actors.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?
    };
    // Servers the miner runs itself come up before the workers that call them.
    let server_specs = workers::managed_servers(&cfg).context("invalid configuration")?;
    let servers = actors.block_on(async {
        let servers = ManagedServers::start(server_specs);
        if servers.is_empty() {
            return Some(servers);
        }
        tracing::info!("waiting for the backend servers to answer /v1/models");
        // A model can load for many minutes: a stop meanwhile stops the servers (and what they
        // left in their groups) as a stop later does; the kernel's parent-death signal, were the
        // miner to die of the SIGTERM, would reach their leaders only.
        let stop = tokio::select! {
            _ = servers.wait_ready() => false,
            _ = tokio::signal::ctrl_c() => true,
            _ = term.recv() => true,
        };
        if stop {
            tracing::info!("stopped while waiting for the backend servers; stopping them");
            servers.stop().await;
            return None;
        }
        Some(servers)
    });
    let Some(servers) = servers else {
        return Ok(());
    };
    let node = actors.block_on(Node::start(&cfg, parts))?;
    if chain_url.is_none() {
        actors.block_on(node.start_challenge_api(&cfg, &hotkey))?;
    }
    if chain_url.is_some() {
        // Nothing is admitted before our registration is confirmed (the workers are still loading
        // when the listener opens, so nothing is admitted before this either).
        set_admission(&node, false);
    }
    tracing::info!(addr = %node.addr, "serving validators");
    match node.http.ops_addr {
        Some(addr) => tracing::info!(%addr, "serving /health and /metrics to the operator"),
        None if cfg.metrics_on_public_port => tracing::warn!("/health and /metrics are served on the public port"),
        None => tracing::info!("/health and /metrics are not served (METRICS_PORT=off)"),
    }

    let outcome = actors.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let (mut src, mut cfg) = (src, cfg);
        let chain_cfg = cfg.clone();
        let mut waiting_for_chain = chain_url.is_some();
        let chain_check = chain::connect_and_check(&chain_cfg, &hotkey, chain::Retry::Forever);
        tokio::pin!(chain_check);
        let outcome: anyhow::Result<()> = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break Ok(()),
                _ = term.recv() => break Ok(()),
                failure = node.graph.failed() => {
                    // Logged here, while the log (a file, perhaps) is still open.
                    tracing::error!(%failure, "the node cannot keep serving: stopping it, exiting {EXIT_SOFTWARE} for a restart");
                    break Err(failure.into());
                }
                _ = hup.recv() => {
                    if let Some((new_src, new_cfg)) = reload(dev, &src, &cfg, &node, &auth, &gpus).await {
                        (src, cfg) = (new_src, new_cfg);
                    }
                }
                checked = &mut chain_check, if waiting_for_chain => {
                    waiting_for_chain = false;
                    let started = match checked {
                        Ok((client, uid)) => {
                            tracing::info!(uid, netuid = chain_cfg.netuid, url = %client.url(), "registered on the subnet");
                            node.start_chain(&chain_cfg, &hotkey, client.url().to_string()).await
                        }
                        Err(e) => Err(e.into()),
                    };
                    match started {
                        Ok(()) => set_admission(&node, true),
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        tracing::info!("shutting down: closing admission, finishing in-flight challenges");
        node.stop().await;
        servers.stop().await;
        Ok::<_, std::io::Error>(outcome)
    })?;
    // The engines free their contexts and models on their own threads; a GPU context freed after
    // main returns (the CUDA driver already shut down) aborts the process instead of exiting 0.
    if loosh_actors::backend_worker::wait_for_engines(std::time::Duration::from_secs(30)) {
        tracing::info!("all engines stopped; exiting");
    } else {
        tracing::warn!("an engine did not stop within 30 s; exiting anyway");
    }
    outcome
}

/// Opens or closes admission (`/availability` says `admission closed` while it is closed).
fn set_admission(node: &Node, open: bool) {
    node.graph.set_admission(open);
}

/// Raises the soft limit on open files to the hard one, as nginx and most servers do: each
/// connection costs two descriptors (the socket and the connection layer's duplicate), and a
/// soft limit of 1,024 — the default on many hosts — would refuse connections well below
/// `MAX_CONNECTIONS`. Says so when even the hard limit is too low.
fn raise_open_files_limit(cfg: &Config) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write or read the struct passed, which outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let needed = (4 * cfg.max_connections + 256) as libc::rlim_t;
    if lim.rlim_cur < needed {
        tracing::warn!(
            limit = lim.rlim_cur,
            needed,
            "the open-files limit is low for MAX_CONNECTIONS; raise it (systemd: LimitNOFILE=65536)"
        );
    }
}
