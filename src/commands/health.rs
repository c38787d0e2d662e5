//! `loosh-miner health`: ask the running miner's `/health`; exit status 0 when it answers (Docker's
//! HEALTHCHECK runs it).

use anyhow::Context;
use loosh_miner::client::ops;
use loosh_miner::config::{Config, Source};

pub fn run() -> anyhow::Result<()> {
    let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
    let addr = ops::ops_address(&cfg)?;
    let body = ops::get(&addr, "/health", std::time::Duration::from_secs(5))?;
    println!("{body}");
    Ok(())
}
