//! The few chain reads and the one call the miner needs, through subxt's dynamic API and decoded
//! against the metadata the node serves, so that a runtime upgrade does not break the miner.

use std::net::IpAddr;

use scale_decode::DecodeAsType;
use subxt::client::{ClientAtBlock, OnlineClientAtBlockImpl};
use subxt::dynamic;
use subxt::ext::futures::StreamExt;
use subxt::{OnlineClient, PolkadotConfig};

use crate::protocol::signature::{ss58_encode, Hotkey};

/// Why a chain operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("chain request failed: {0}")]
    Rpc(String),
    #[error("serve_axon refused: ServingRateLimitExceeded (the chain allows one post per rate-limit window)")]
    RateLimited,
    #[error("transaction failed: {0}")]
    Dispatch(String),
}

fn rpc<E: std::fmt::Display>(e: E) -> ChainError {
    ChainError::Rpc(e.to_string())
}

/// A neuron's advertised address, as the chain stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, DecodeAsType)]
pub struct AxonInfo {
    pub block: u64,
    pub version: u32,
    pub ip: u128,
    pub port: u16,
    pub ip_type: u8,
    pub protocol: u8,
}

impl AxonInfo {
    /// The advertised address, when it parses.
    pub fn addr(&self) -> Option<(IpAddr, u16)> {
        let ip = match self.ip_type {
            4 => IpAddr::from(std::net::Ipv4Addr::from(u32::try_from(self.ip).ok()?)),
            6 => IpAddr::from(std::net::Ipv6Addr::from(self.ip)),
            _ => return None,
        };
        Some((ip, self.port))
    }
}

/// The chain's encoding of an IP address: (u128 value, 4 or 6).
pub fn encode_ip(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 4),
        IpAddr::V6(v6) => (u128::from(v6), 6),
    }
}

/// One neuron of the metagraph, as far as the miner cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neuron {
    pub uid: u16,
    pub hotkey: String,
    /// The hotkey's account id (the key of its `Axons` entry).
    pub account: [u8; 32],
    pub validator_permit: bool,
    /// Alpha stake on this subnet, in rao.
    pub alpha_stake: u64,
    pub incentive: u16,
}

/// A connection to a subtensor node.
#[derive(Clone)]
pub struct ChainClient {
    api: OnlineClient<PolkadotConfig>,
    url: String,
}

/// An account and the address its axon gives.
type AxonAddress = ([u8; 32], IpAddr);

/// What the metagraph reads per uid: (uid, account, alpha stake).
type NeuronRead = (u16, [u8; 32], u64);

/// Metagraph reads kept in flight at once.
const METAGRAPH_READS_IN_FLIGHT: usize = 32;

/// Version number we advertise in `serve_axon` (the Python miner's fiber posts 1).
pub const AXON_VERSION: u32 = 1;

impl ChainClient {
    /// Connects over ws:// or wss://.
    pub async fn connect(url: &str) -> Result<Self, ChainError> {
        let connect = |message: String| ChainError::Connect { url: url.into(), message };
        let rpc = if url.starts_with("ws://") {
            subxt::rpcs::RpcClient::from_insecure_url(url).await
        } else {
            subxt::rpcs::RpcClient::from_url(url).await
        }
        .map_err(|e| connect(e.to_string()))?;
        // The legacy RPC methods: every subtensor node serves them, while the newer
        // chainHead/transactionWatch set is not everywhere complete (chopsticks lacks
        // transactionWatch_v1), and a backend chosen by probing would vary from node to node.
        let backend = subxt::backend::LegacyBackend::builder().build(rpc);
        let api = OnlineClient::<PolkadotConfig>::from_backend(std::sync::Arc::new(backend))
            .await
            .map_err(|e| connect(e.to_string()))?;
        Ok(Self { api, url: url.into() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A view of the chain at its latest finalized block: read several things at one block, for
    /// the price of one head lookup.
    pub async fn head(&self) -> Result<Head, ChainError> {
        self.api.at_current_block().await.map(Head).map_err(rpc)
    }

    /// The latest finalized block number.
    pub async fn block_number(&self) -> Result<u64, ChainError> {
        Ok(self.head().await?.number())
    }

    pub async fn timestamp_ms(&self) -> Result<u64, ChainError> {
        self.head().await?.timestamp_ms().await
    }

    /// How far this host's clock runs ahead of the chain's latest block, in seconds (negative:
    /// behind). Validators' Fernet refuses tokens stamped over 60 s ahead, so `doctor` reads it.
    pub async fn clock_skew_secs(&self) -> Result<f64, ChainError> {
        let chain_ms = self.timestamp_ms().await?;
        Ok(crate::protocol::messages::unix_time_f64() - chain_ms as f64 / 1000.0)
    }

    pub async fn uid_of(&self, netuid: u16, account: [u8; 32]) -> Result<Option<u16>, ChainError> {
        self.head().await?.uid_of(netuid, account).await
    }

    pub async fn axon_of(&self, netuid: u16, account: [u8; 32]) -> Result<Option<AxonInfo>, ChainError> {
        self.head().await?.axon_of(netuid, account).await
    }

    pub async fn metagraph(&self, netuid: u16) -> Result<Vec<Neuron>, ChainError> {
        self.head().await?.metagraph(netuid).await
    }

    /// Posts our axon (`serve_axon`, signed by the hotkey) and waits until it is in a finalized block.
    pub async fn serve_axon(&self, hotkey: &Hotkey, netuid: u16, ip: IpAddr, port: u16) -> Result<(), ChainError> {
        let (ip, ip_type) = encode_ip(ip);
        let call = dynamic::transaction(
            "SubtensorModule",
            "serve_axon",
            (netuid, AXON_VERSION, ip, port, ip_type, 4u8, 0u8, 0u8),
        );
        let at = self.api.at_current_block().await.map_err(rpc)?;
        let progress =
            at.transactions().sign_and_submit_then_watch_default(&call, hotkey.keypair()).await.map_err(rpc)?;
        match progress.wait_for_finalized_success().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = e.to_string();
                if text.contains("ServingRateLimitExceeded") {
                    Err(ChainError::RateLimited)
                } else {
                    Err(ChainError::Dispatch(text))
                }
            }
        }
    }

    /// A raw JSON-RPC call (chopsticks' `dev_*` methods in tests and benchmarks).
    pub async fn raw_request(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, ChainError> {
        let client = subxt::rpcs::RpcClient::from_insecure_url(&self.url).await.map_err(rpc)?;
        let params = match params {
            serde_json::Value::Array(items) => {
                let mut p = subxt::rpcs::client::RpcParams::new();
                for item in items {
                    p.push(item).map_err(rpc)?;
                }
                p
            }
            _ => subxt::rpcs::client::RpcParams::new(),
        };
        client.request(method, params).await.map_err(rpc)
    }

    /// The underlying subxt client (tests submit setup extrinsics with it).
    pub fn api(&self) -> &OnlineClient<PolkadotConfig> {
        &self.api
    }
}

/// The chain as of one block (see [`ChainClient::head`]).
pub struct Head(ClientAtBlock<PolkadotConfig, OnlineClientAtBlockImpl<PolkadotConfig>>);

impl Head {
    /// The block this view reads at.
    pub fn number(&self) -> u64 {
        self.0.block_number()
    }

    /// The chain's clock (`Timestamp.Now`), in unix milliseconds.
    pub async fn timestamp_ms(&self) -> Result<u64, ChainError> {
        let at = &self.0;
        let v = at.storage().fetch(dynamic::storage::<(), u64>("Timestamp", "Now"), ()).await.map_err(rpc)?;
        v.decode().map_err(rpc)
    }

    /// Our uid on `netuid`, or `None` when the hotkey is not registered there.
    pub async fn uid_of(&self, netuid: u16, account: [u8; 32]) -> Result<Option<u16>, ChainError> {
        let at = &self.0;
        let addr = dynamic::storage::<(u16, [u8; 32]), u16>("SubtensorModule", "Uids");
        match at.storage().try_fetch(addr, (netuid, account)).await.map_err(rpc)? {
            Some(v) => Ok(Some(v.decode().map_err(rpc)?)),
            None => Ok(None),
        }
    }

    /// The axon a hotkey advertises on `netuid`.
    pub async fn axon_of(&self, netuid: u16, account: [u8; 32]) -> Result<Option<AxonInfo>, ChainError> {
        let at = &self.0;
        let addr = dynamic::storage::<(u16, [u8; 32]), AxonInfo>("SubtensorModule", "Axons");
        match at.storage().try_fetch(addr, (netuid, account)).await.map_err(rpc)? {
            Some(v) => Ok(Some(v.decode().map_err(rpc)?)),
            None => Ok(None),
        }
    }

    /// The addresses that `accounts` advertise on `netuid`, read concurrently: an account with no
    /// axon, or one posted as an unspecified address (`0.0.0.0`, as validators that serve nothing
    /// post), is left out.
    pub async fn axon_addresses(&self, netuid: u16, accounts: &[[u8; 32]]) -> Result<Vec<AxonAddress>, ChainError> {
        let storage = self.0.storage();
        let storage = &storage;
        let axons_addr = dynamic::storage::<(u16, [u8; 32]), AxonInfo>("SubtensorModule", "Axons");
        let reads = accounts.iter().copied().map(|account| {
            let axons_addr = axons_addr.clone();
            async move {
                let Some(v) = storage.try_fetch(axons_addr, (netuid, account)).await.map_err(rpc)? else {
                    return Ok::<_, ChainError>(None);
                };
                let axon: AxonInfo = v.decode().map_err(rpc)?;
                Ok(axon.addr().filter(|(ip, _)| !ip.is_unspecified()).map(|(ip, _)| (account, ip)))
            }
        });
        let found: Vec<Result<Option<AxonAddress>, ChainError>> =
            subxt::ext::futures::stream::iter(reads).buffered(METAGRAPH_READS_IN_FLIGHT).collect().await;
        found.into_iter().filter_map(Result::transpose).collect()
    }

    /// Every neuron of `netuid`: hotkeys, validator permits, alpha stake, incentive.
    pub async fn metagraph(&self, netuid: u16) -> Result<Vec<Neuron>, ChainError> {
        let at = &self.0;
        let storage = at.storage();
        let n: u16 = storage
            .fetch(dynamic::storage::<(u16,), u16>("SubtensorModule", "SubnetworkN"), (netuid,))
            .await
            .map_err(rpc)?
            .decode()
            .map_err(rpc)?;
        let permits: Vec<bool> = storage
            .fetch(dynamic::storage::<(u16,), Vec<bool>>("SubtensorModule", "ValidatorPermit"), (netuid,))
            .await
            .map_err(rpc)?
            .decode()
            .map_err(rpc)?;
        let incentives: Vec<u16> = storage
            .fetch(dynamic::storage::<(u16,), Vec<u16>>("SubtensorModule", "Incentive"), (netuid,))
            .await
            .map_err(rpc)?
            .decode()
            .map_err(rpc)?;
        let keys_addr = dynamic::storage::<(u16, u16), [u8; 32]>("SubtensorModule", "Keys");
        let alpha_addr = dynamic::storage::<([u8; 32], u16), u64>("SubtensorModule", "TotalHotkeyAlpha");
        // Two reads per neuron, many in flight: over a remote RPC a sequential sync of 256 neurons
        // would take tens of seconds.
        let storage = &storage;
        let reads = (0..n).map(|uid| {
            let (keys_addr, alpha_addr) = (keys_addr.clone(), alpha_addr.clone());
            async move {
                let Some(key) = storage.try_fetch(keys_addr, (netuid, uid)).await.map_err(rpc)? else {
                    return Ok::<_, ChainError>(None);
                };
                let account: [u8; 32] = key.decode().map_err(rpc)?;
                let alpha_stake: u64 =
                    storage.fetch(alpha_addr, (account, netuid)).await.map_err(rpc)?.decode().map_err(rpc)?;
                Ok(Some((uid, account, alpha_stake)))
            }
        });
        let found: Vec<Result<Option<NeuronRead>, ChainError>> =
            subxt::ext::futures::stream::iter(reads).buffered(METAGRAPH_READS_IN_FLIGHT).collect().await;
        let mut neurons = Vec::with_capacity(usize::from(n));
        for item in found {
            let Some((uid, account, alpha_stake)) = item? else { continue };
            neurons.push(Neuron {
                uid,
                hotkey: ss58_encode(&account),
                account,
                validator_permit: permits.get(usize::from(uid)).copied().unwrap_or(false),
                alpha_stake,
                incentive: incentives.get(usize::from(uid)).copied().unwrap_or(0),
            });
        }
        Ok(neurons)
    }
}
