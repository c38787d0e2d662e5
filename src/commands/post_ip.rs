//! `loosh-miner post-ip`: post the axon address to the chain (`serve_axon`), like fiber-post-ip.

use anyhow::Context;
use loosh_miner::config::{Config, Source};
use loosh_miner::{registration, wallet};

pub fn run(external_ip: std::net::IpAddr, external_port: u16) -> anyhow::Result<()> {
    let cfg = Config::from_source(&Source::load()).context("invalid configuration")?;
    let _log_guard = super::init_logs(&cfg)?;
    let hotkey = wallet::load_hotkey(&cfg.wallet_path)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(registration::post_ip(&cfg, &hotkey, external_ip, external_port))?;
    Ok(())
}
