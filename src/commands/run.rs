//! `loosh-miner run` (the default): start the node, serve validators until SIGTERM or Ctrl-C, apply
//! SIGHUP (see `reload.rs`), and stop gracefully. The exit status is `main`'s to map.

use std::sync::Arc;

use anyhow::Context;
use loosh_actors::front_door::ValidatorAuth;
use loosh_actors::settings::Hotkey;
use loosh_miner::config::workers;
use loosh_miner::config::{Config, Source};
use loosh_miner::managed_server::ManagedServers;
use loosh_miner::node::{Node, NodeParts};
use loosh_miner::{registration, wallet};

use crate::EXIT_SOFTWARE;

pub fn run(dev: bool) -> anyhow::Result<()> {
    let src = Source::load();
    let cfg = src.check_named_file().and_then(|()| super::load_config(&src, dev)).context("invalid configuration")?;
    let _log_guard = super::init_logs(&cfg)?;
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

    let gpus = loosh_actors::settings::gpu_devices();
    for (index, description) in &gpus {
        tracing::info!(device = index, %description, "GPU visible to llama.cpp");
    }
    let specs = workers::worker_specs(&cfg, &gpus).context("invalid configuration")?;
    for spec in &specs {
        tracing::info!(worker = %spec.name, device = %spec.device, engine = ?spec.engine, process = ?spec.process, "worker configured");
    }
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
    // The chain actors start once the chain has answered (below), so that a chain outage at boot
    // is waited out while serving `/availability: false`.
    let parts = NodeParts {
        hotkey: hotkey.clone(),
        workers: specs,
        auth: auth.clone(),
        chain_url: None,
        listen: (cfg.api_host.clone(), cfg.api_port),
        servers,
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
        None if cfg.http.ops_on_public_port => tracing::warn!("/health and /metrics are served on the public port"),
        None => tracing::info!("/health and /metrics are not served (METRICS_PORT=off)"),
    }

    let outcome = actors.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let (mut src, mut cfg) = (src, cfg);
        let chain_cfg = cfg.clone();
        let mut waiting_for_chain = chain_url.is_some();
        let chain_check = registration::connect_and_check(&chain_cfg, &hotkey, registration::Retry::Forever);
        tokio::pin!(chain_check);
        let outcome: anyhow::Result<()> = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break Ok(()),
                _ = term.recv() => break Ok(()),
                failure = node.door.failed() => {
                    // Logged here, while the log (a file, perhaps) is still open.
                    tracing::error!(%failure, "the node cannot keep serving: stopping it, exiting {EXIT_SOFTWARE} for a restart");
                    break Err(failure.into());
                }
                _ = hup.recv() => {
                    if let Some((new_src, new_cfg)) = crate::reload::apply(dev, &src, &cfg, &node, &auth, &gpus).await {
                        (src, cfg) = (new_src, new_cfg);
                    }
                }
                checked = &mut chain_check, if waiting_for_chain => {
                    waiting_for_chain = false;
                    let started = match checked {
                        Ok((client, uid)) => {
                            tracing::info!(uid, netuid = chain_cfg.chain.netuid, url = %client.url(), "registered on the subnet");
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
        tracing::info!("stopped; exiting");
        Ok::<_, std::io::Error>(outcome)
    })?;
    outcome
}

/// Opens or closes admission (`/availability` says `admission closed` while it is closed).
fn set_admission(node: &Node, open: bool) {
    node.door.set_admission(open);
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
    let needed = (4 * cfg.http.max_connections + 256) as libc::rlim_t;
    if lim.rlim_cur < needed {
        tracing::warn!(
            limit = lim.rlim_cur,
            needed,
            "the open-files limit is low for MAX_CONNECTIONS; raise it (systemd: LimitNOFILE=65536)"
        );
    }
}
