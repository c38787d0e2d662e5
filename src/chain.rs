//! The node's use of the chain at start and from the command line: checking registration,
//! `post-ip`, and the heartbeat's settings.

use std::net::IpAddr;
use std::time::Duration;

use loosh_actors::chain::client::{ChainClient, ChainError};
use loosh_actors::chain::ChainSettings;
use loosh_actors::protocol::signature::Hotkey;
use thiserror::Error;

use crate::config::Config;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("hotkey {hotkey} is not registered on subnet {netuid}: register it with `btcli subnet register --netuid {netuid} --wallet.name {wallet} --wallet.hotkey {hotkey_name}`")]
    NotRegistered { hotkey: String, netuid: u16, wallet: String, hotkey_name: String },
    #[error("{0}")]
    Config(String),
}

pub fn settings(cfg: &Config, url: String) -> ChainSettings {
    ChainSettings {
        url,
        netuid: cfg.netuid,
        sync_every_blocks: cfg.metagraph_sync_blocks,
        poll_every: cfg.chain_poll,
        min_validator_stake: cfg.min_validator_stake,
        axon: cfg.axon_external,
        reconnect_initial: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(60),
    }
}

/// Connects (a few tries) and checks that `hotkey` is registered on `NETUID`; returns the client
/// and our uid.
pub async fn connect_and_check(cfg: &Config, hotkey: &Hotkey) -> Result<(ChainClient, u16), StartError> {
    let url = cfg.chain_url().map_err(|e| StartError::Config(e.to_string()))?;
    let mut wait = Duration::from_secs(1);
    let client = loop {
        match ChainClient::connect(&url).await {
            Ok(c) => break c,
            Err(e) if wait <= Duration::from_secs(8) => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "chain unreachable at start");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    };
    match client.uid_of(cfg.netuid, hotkey.account_id()).await? {
        Some(uid) => Ok((client, uid)),
        None => Err(StartError::NotRegistered {
            hotkey: hotkey.ss58().into(),
            netuid: cfg.netuid,
            wallet: cfg.wallet_name.clone(),
            hotkey_name: cfg.hotkey_name.clone(),
        }),
    }
}

/// `loosh-miner post-ip`: submits `serve_axon` and waits for inclusion, as `fiber-post-ip` does.
pub async fn post_ip(cfg: &Config, hotkey: &Hotkey, ip: IpAddr, port: u16) -> Result<(), StartError> {
    let (client, uid) = connect_and_check(cfg, hotkey).await?;
    println!("hotkey {} is uid {uid} on subnet {}", hotkey.ss58(), cfg.netuid);
    if let Some(current) = client.axon_of(cfg.netuid, hotkey.account_id()).await?.and_then(|a| a.addr()) {
        println!("the chain holds {}:{}", current.0, current.1);
    }
    client.serve_axon(hotkey, cfg.netuid, ip, port).await?;
    let now = client.axon_of(cfg.netuid, hotkey.account_id()).await?.and_then(|a| a.addr());
    match now {
        Some((i, p)) if i == ip && p == port => {
            println!("posted {ip}:{port}");
            Ok(())
        }
        other => Err(StartError::Config(format!("serve_axon was included but the chain reads {other:?}"))),
    }
}
