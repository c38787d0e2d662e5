//! `loosh-miner doctor`: check wallet, chain, registration, axon, clock and workers, one line each
//! with the fix; exit status 1 when a check fails.

use anyhow::Context;
use loosh_miner::config::{Config, Source};
use loosh_miner::logging;

pub fn run() -> anyhow::Result<()> {
    let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
    let _log_guard = logging::init_console("error");
    let rt = tokio::runtime::Runtime::new()?;
    if !rt.block_on(loosh_miner::doctor::run(&cfg)) {
        std::process::exit(1);
    }
    Ok(())
}
