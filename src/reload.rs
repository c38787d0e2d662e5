//! SIGHUP: the running node re-reads its configuration file and applies what can change without a
//! restart (the validator lists, the rate limits, the log level, the workers). `commands/run.rs`
//! calls it from its signal loop; kept apart so that the start-up and a live change read apart.

use loosh_actors::front_door::ValidatorAuth;
use loosh_miner::config::workers;
use loosh_miner::config::{Config, Source};
use loosh_miner::logging;
use loosh_miner::node::Node;

/// SIGHUP: re-reads the configuration file (`--env-file`, else `.env`) and `WORKERS_FILE`; applies
/// the lists, the rate limits, the log level and the workers (added, removed or changed ones; the
/// others keep running) without touching keys or in-flight challenges; names what needs a
/// restart, and says so when nothing changed. A configuration that does not load is refused whole
/// and the running one kept. (The process environment is fixed for its life: only a file reloads.)
pub async fn apply(
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
    let loaded = src
        .check_named_file()
        .and_then(|()| crate::commands::load_config(&src, dev))
        .and_then(|c| c.validate().map(|()| c));
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
    match node.door.set_workers(specs).await {
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
        node.door.validators().replace(loosh_actors::front_door::Source::Static, listed);
    }
    if cfg.validator_deny_hotkeys != old.validator_deny_hotkeys {
        node.door.validators().deny(cfg.validator_deny_hotkeys.iter().cloned().collect());
    }
    if cfg.strict_validator_addresses != old.strict_validator_addresses {
        auth.set_strict_addresses(cfg.strict_validator_addresses);
    }
    if (cfg.rate_limit_enabled, &cfg.rate_limits) != (old.rate_limit_enabled, &old.rate_limits) {
        node.door.set_rate_limits(cfg.active_rate_limits());
    }
    tracing::info!(applied = ?applied, files = ?src.files, "configuration reloaded (SIGHUP)");
    if !restart.is_empty() {
        tracing::warn!("changed but applied only at the next restart: {}", restart.join(", "));
    }
    Some((src, cfg))
}
