//! `loosh-miner status`: one table of the running miner, read from its operator port.

use anyhow::Context;
use loosh_miner::config::{Config, Source};

pub fn run() -> anyhow::Result<()> {
    let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
    print!("{}", loosh_miner::client::status::run(&cfg)?);
    Ok(())
}
