//! The chain: subxt client, the heartbeat actor that keeps the metagraph and our axon current.

pub mod challenge_api;
pub mod client;
pub mod heartbeat;

use std::net::IpAddr;
use std::time::Duration;

/// Chain presets, as the Python miner's `SUBTENSOR_NETWORK` names them.
pub fn network_url(network: &str) -> Option<&'static str> {
    match network {
        "finney" | "mainnet" => Some("wss://entrypoint-finney.opentensor.ai:443"),
        "test" | "testnet" => Some("wss://test.finney.opentensor.ai:443"),
        "local" => Some("ws://127.0.0.1:9944"),
        _ => None,
    }
}

/// What the heartbeat needs to know.
#[derive(Debug, Clone)]
pub struct ChainSettings {
    pub url: String,
    pub netuid: u16,
    /// Re-sync the metagraph every this many blocks.
    pub sync_every_blocks: u64,
    /// How often to look at the chain head.
    pub poll_every: Duration,
    /// Validators need at least this much alpha stake (rao) besides their permit.
    pub min_validator_stake: u64,
    /// The address to advertise (`AXON_EXTERNAL_IP` / `AXON_EXTERNAL_PORT`), if the node posts it.
    pub axon: Option<(IpAddr, u16)>,
    /// First reconnect wait; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}
