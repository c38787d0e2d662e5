//! The chain heartbeat: follows the chain head, re-syncs the metagraph every
//! `METAGRAPH_SYNC_BLOCKS`, keeps the chain-sourced validator set current (through
//! [`ValidatorSet`], which drops the keys and metrics of a validator that loses its permit), and posts our axon when the configured address differs from
//! what the chain holds. Each sync also reads the validators' axons: the addresses the chain
//! reports for them (see [`crate::front_door::share`]). On a lost connection it reconnects with backoff while the miner keeps
//! serving with the last good metagraph; `/metrics` and the logs show the outage.
//!
//! Spawned by the node (not in `--dev`); talks to the validator set (authorization, keys,
//! metrics).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::client::{ChainClient, ChainError, Head, Neuron};
use super::ChainSettings;
use crate::authorization::Source;
use crate::protocol::signature::Hotkey;
use crate::validator_set::ValidatorSet;

pub enum HeartbeatMsg {
    Tick,
    /// Sync the metagraph (and the axon) now, whatever the block.
    SyncNow(RpcReplyPort<Result<(), ChainError>>),
    Status(RpcReplyPort<ChainStatus>),
}

/// What `/metrics`, `doctor` and tests see of the chain.
#[derive(Debug, Clone, Default)]
pub struct ChainStatus {
    pub connected: bool,
    pub block: Option<u64>,
    pub synced_at_block: Option<u64>,
    pub neurons: usize,
    pub validators: usize,
    /// Validators whose axon gives an address (the chain's report of where they exchange from).
    pub validator_axons: usize,
    pub our_uid: Option<u16>,
    pub our_incentive: u16,
    pub posted_axon: Option<(IpAddr, u16)>,
    pub rate_limited: u64,
    pub outages: u64,
    pub last_error: Option<String>,
}

#[derive(Clone)]
pub struct HeartbeatArgs {
    pub settings: ChainSettings,
    pub hotkey: Hotkey,
    /// The chain's validators go there: one that drops out loses its keys and its metrics.
    pub validators: ValidatorSet,
}

pub struct ChainHeartbeat;

pub struct HeartbeatState {
    args: HeartbeatArgs,
    client: Option<ChainClient>,
    next_connect: Instant,
    backoff: Duration,
    status: ChainStatus,
    axon_checked: bool,
}

impl HeartbeatState {
    fn disconnect(&mut self, why: &ChainError) {
        if self.client.take().is_some() {
            self.status.outages += 1;
            self.args.validators.metrics.chain_outages.inc();
            tracing::warn!(error = %why, "chain connection lost; serving with the last metagraph while reconnecting");
        }
        self.status.connected = false;
        self.status.last_error = Some(why.to_string());
        self.args.validators.metrics.chain_connected.set(0);
        self.next_connect = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.args.settings.reconnect_max);
    }

    async fn ensure_connected(&mut self) -> Option<ChainClient> {
        if let Some(c) = &self.client {
            return Some(c.clone());
        }
        if Instant::now() < self.next_connect {
            return None;
        }
        match ChainClient::connect(&self.args.settings.url).await {
            Ok(c) => {
                tracing::info!(url = %self.args.settings.url, "chain connected");
                self.client = Some(c.clone());
                self.status.connected = true;
                self.backoff = self.args.settings.reconnect_initial;
                self.args.validators.metrics.chain_connected.set(1);
                // A reconnect may follow a chain restart: look at everything again.
                self.status.synced_at_block = None;
                self.axon_checked = false;
                Some(c)
            }
            Err(e) => {
                self.status.last_error = Some(e.to_string());
                tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "chain unreachable");
                self.next_connect = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(self.args.settings.reconnect_max);
                None
            }
        }
    }

    async fn sync(&mut self, head: &Head) -> Result<(), ChainError> {
        let block = head.number();
        let started = Instant::now();
        let s = &self.args.settings;
        let neurons: Vec<Neuron> = head.metagraph(s.netuid).await?;
        let validators: HashSet<String> = neurons
            .iter()
            .filter(|n| n.validator_permit && n.alpha_stake >= s.min_validator_stake)
            .map(|n| n.hotkey.clone())
            .collect();
        // The validators' advertised addresses: their "home" for the shares of this miner and, under
        // STRICT_VALIDATOR_ADDRESSES, the only addresses their exchanges are taken from. Read
        // before the set is published, so that a validator is never admitted without them.
        let listed: Vec<&Neuron> = neurons.iter().filter(|n| validators.contains(&n.hotkey)).collect();
        let accounts: Vec<[u8; 32]> = listed.iter().map(|n| n.account).collect();
        let mut addresses: HashMap<String, HashSet<IpAddr>> = HashMap::new();
        for (account, ip) in head.axon_addresses(s.netuid, &accounts).await? {
            if let Some(n) = listed.iter().find(|n| n.account == account) {
                addresses.entry(n.hotkey.clone()).or_default().insert(ip);
            }
        }
        self.status.validator_axons = addresses.len();
        self.args.validators.metrics.chain_validator_axons.set(addresses.len() as i64);
        self.args.validators.auth.set_reported_addresses(Source::Chain, addresses);
        let ours = neurons.iter().find(|n| n.hotkey == self.args.hotkey.ss58());
        self.status.our_uid = ours.map(|n| n.uid);
        self.status.our_incentive = ours.map_or(0, |n| n.incentive);
        self.status.neurons = neurons.len();
        self.status.validators = validators.len();
        self.status.synced_at_block = Some(block);
        let m = &self.args.validators.metrics;
        m.metagraph_neurons.set(neurons.len() as i64);
        m.chain_validators.set(validators.len() as i64);
        m.our_uid.set(ours.map_or(-1, |n| i64::from(n.uid)));
        m.our_incentive.set(ours.map_or(0.0, |n| f64::from(n.incentive) / f64::from(u16::MAX)));
        m.metagraph_synced_at.set(crate::protocol::messages::unix_time_f64() as i64);
        m.validators.stake.reset();
        for n in neurons.iter().filter(|n| validators.contains(&n.hotkey)) {
            m.validators.stake.with_label_values(&[&n.hotkey]).set(n.alpha_stake as f64 / 1e9);
        }
        self.args.validators.replace(Source::Chain, validators);
        if ours.is_none() {
            tracing::warn!(netuid = s.netuid, hotkey = %self.args.hotkey.ss58(), "our hotkey is not registered on the subnet");
        }
        tracing::debug!(block, neurons = neurons.len(), ms = started.elapsed().as_millis() as u64, "metagraph synced");
        Ok(())
    }

    /// Posts the configured axon when the chain holds something else.
    async fn check_axon(&mut self, client: &ChainClient, head: &Head) -> Result<(), ChainError> {
        let Some((ip, port)) = self.args.settings.axon else { return Ok(()) };
        let account = self.args.hotkey.account_id();
        let current = head.axon_of(self.args.settings.netuid, account).await?.and_then(|a| a.addr());
        self.args.validators.metrics.axon.reset();
        if let Some((ip, port)) = current {
            self.args.validators.metrics.axon.with_label_values(&[&format!("{ip}:{port}")]).set(1);
        }
        if current == Some((ip, port)) {
            self.status.posted_axon = current;
            self.axon_checked = true;
            return Ok(());
        }
        tracing::info!(%ip, port, ?current, "posting our axon (serve_axon)");
        match client.serve_axon(&self.args.hotkey, self.args.settings.netuid, ip, port).await {
            Ok(()) => {
                self.args.validators.metrics.axon_posts.with_label_values(&["ok"]).inc();
                self.args.validators.metrics.axon.reset();
                self.args.validators.metrics.axon.with_label_values(&[&format!("{ip}:{port}")]).set(1);
                self.status.posted_axon = Some((ip, port));
                self.axon_checked = true;
                tracing::info!(%ip, port, "axon posted");
                Ok(())
            }
            Err(ChainError::RateLimited) => {
                self.args.validators.metrics.axon_posts.with_label_values(&["rate_limited"]).inc();
                self.status.rate_limited += 1;
                // Checked for this sync: the next sync tries again, not every poll tick.
                self.axon_checked = true;
                tracing::warn!("serve_axon rate-limited by the chain; will retry at the next sync");
                Ok(())
            }
            Err(e) => {
                self.args.validators.metrics.axon_posts.with_label_values(&["error"]).inc();
                Err(e)
            }
        }
    }

    async fn beat(&mut self, force: bool) -> Result<(), ChainError> {
        let Some(client) = self.ensure_connected().await else {
            return Err(ChainError::Rpc(self.status.last_error.clone().unwrap_or_else(|| "not connected".into())));
        };
        // One head lookup per beat: the block number, the metagraph and our axon all read at it.
        let head = match client.head().await {
            Ok(h) => h,
            Err(e) => {
                self.disconnect(&e);
                return Err(e);
            }
        };
        let block = head.number();
        self.status.block = Some(block);
        self.args.validators.metrics.chain_block.set(block as i64);
        let due = self.status.synced_at_block.is_none_or(|s| block >= s + self.args.settings.sync_every_blocks);
        if force || due {
            if let Err(e) = self.sync(&head).await {
                self.disconnect(&e);
                return Err(e);
            }
        }
        if force || due || !self.axon_checked {
            if let Err(e) = self.check_axon(&client, &head).await {
                tracing::warn!(error = %e, "axon check failed");
                self.status.last_error = Some(e.to_string());
                if matches!(e, ChainError::Rpc(_)) {
                    self.disconnect(&e);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Actor for ChainHeartbeat {
    type Msg = HeartbeatMsg;
    type State = HeartbeatState;
    type Arguments = HeartbeatArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        args: HeartbeatArgs,
    ) -> Result<HeartbeatState, ActorProcessingErr> {
        myself.send_interval(args.settings.poll_every, || HeartbeatMsg::Tick);
        myself.cast(HeartbeatMsg::Tick)?;
        args.validators.metrics.chain_connected.set(0);
        Ok(HeartbeatState {
            backoff: args.settings.reconnect_initial,
            args,
            client: None,
            next_connect: Instant::now(),
            status: ChainStatus::default(),
            axon_checked: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HeartbeatMsg>,
        msg: HeartbeatMsg,
        state: &mut HeartbeatState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HeartbeatMsg::Tick => {
                let _ = state.beat(false).await;
            }
            HeartbeatMsg::SyncNow(reply) => {
                let _ = reply.send(state.beat(true).await);
            }
            HeartbeatMsg::Status(reply) => {
                let _ = reply.send(state.status.clone());
            }
        }
        Ok(())
    }
}
