//! The operator's hotkey on the chain, at start and from the command line: the registration check
//! (with the `btcli` command that fixes a missing registration), `post-ip`, and the heartbeat's
//! settings at the endpoint that answered. The chain client itself is the engine's
//! (`actors/src/chain/`), taken from the front door.

use std::net::IpAddr;
use std::time::Duration;

use loosh_actors::front_door::{ChainClient, ChainError};
use loosh_actors::settings::ChainSettings;
use loosh_actors::settings::Hotkey;
use thiserror::Error;

use crate::config::Config;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The hint names the network and netuid in use: without `--subtensor.network`, btcli
    /// registers on mainnet (and spends real TAO) for a miner configured for testnet.
    #[error("hotkey {hotkey} is not registered on subnet {netuid} of {network}: register it with `btcli subnet register --subtensor.network {network} --netuid {netuid} --wallet.name {wallet} --wallet.hotkey {hotkey_name}`")]
    NotRegistered { hotkey: String, netuid: u16, network: String, wallet: String, hotkey_name: String },
    #[error("{0}")]
    Config(String),
}

/// The heartbeat's settings: the configuration's, at `url`, the endpoint that answered.
pub fn heartbeat_settings(cfg: &Config, url: String) -> ChainSettings {
    ChainSettings { url, ..cfg.chain.clone() }
}

/// How long [`connect_and_check`] keeps trying to reach the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A few tries over ~15 s (commands an operator runs by hand).
    Few,
    /// Until it answers, backing off to once a minute: a node that starts during a chain outage
    /// waits for it instead of exiting into systemd's start limit or PM2's `max_restarts`.
    Forever,
}

impl StartError {
    /// The hint for `hotkey` on this configuration's chain, shared by start-up and `doctor`.
    /// btcli's `--subtensor.network` is `SUBTENSOR_ADDRESS` when set (btcli takes an endpoint there
    /// too), else the `SUBTENSOR_NETWORK` name: the chain this miner checks.
    pub fn not_registered(cfg: &Config, hotkey: &Hotkey) -> Self {
        StartError::NotRegistered {
            hotkey: hotkey.ss58().into(),
            netuid: cfg.chain.netuid,
            network: cfg.subtensor_address.clone().unwrap_or_else(|| cfg.subtensor_network.clone()),
            wallet: cfg.wallet_name.clone(),
            hotkey_name: cfg.hotkey_name.clone(),
        }
    }

    /// Whether restarting with the same configuration cannot help (the node exits with
    /// `EX_CONFIG`, which the unit and the PM2 file do not restart).
    pub fn is_configuration(&self) -> bool {
        matches!(self, StartError::NotRegistered { .. } | StartError::Config(_))
    }
}

/// Connects and checks that `hotkey` is registered on `NETUID`; returns the client and our uid.
/// A chain that cannot be reached (or read) is retried as `retry` says; each retry is logged.
pub async fn connect_and_check(cfg: &Config, hotkey: &Hotkey, retry: Retry) -> Result<(ChainClient, u16), StartError> {
    let url = cfg.chain_url().map_err(|e| StartError::Config(e.to_string()))?;
    let mut wait = Duration::from_secs(1);
    loop {
        let attempt = match ChainClient::connect(&url).await {
            Ok(client) => match client.uid_of(cfg.chain.netuid, hotkey.account_id()).await {
                Ok(uid) => Ok((client, uid)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match attempt {
            Ok((client, Some(uid))) => return Ok((client, uid)),
            Ok((_, None)) => return Err(StartError::not_registered(cfg, hotkey)),
            // Few: waits of 1, 2, 4 and 8 s, then the error.
            Err(e) if retry == Retry::Forever || wait <= Duration::from_secs(8) => {
                tracing::warn!(error = %e, %url, retry_in_s = wait.as_secs(), "chain unreachable at start; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `loosh-miner post-ip`: submits `serve_axon` and waits for inclusion, as `fiber-post-ip` does.
pub async fn post_ip(cfg: &Config, hotkey: &Hotkey, ip: IpAddr, port: u16) -> Result<(), StartError> {
    let (client, uid) = connect_and_check(cfg, hotkey, Retry::Few).await?;
    println!("hotkey {} is uid {uid} on subnet {}", hotkey.ss58(), cfg.chain.netuid);
    if let Some(current) = client.axon_of(cfg.chain.netuid, hotkey.account_id()).await?.and_then(|a| a.addr()) {
        println!("the chain holds {}:{}", current.0, current.1);
    }
    client.serve_axon(hotkey, cfg.chain.netuid, ip, port).await?;
    let now = client.axon_of(cfg.chain.netuid, hotkey.account_id()).await?.and_then(|a| a.addr());
    match now {
        Some((i, p)) if i == ip && p == port => {
            println!("posted {ip}:{port}");
            Ok(())
        }
        other => Err(StartError::Config(format!("serve_axon was included but the chain reads {other:?}"))),
    }
}
