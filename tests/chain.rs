//! Against a real subtensor runtime (spec 218 under chopsticks, on loopback, started by
//! scripts/start-chain.sh): registration, `post-ip`, the heartbeat's axon re-post and rate limit,
//! chain-backed validator authorization through the real miner binary, and a chain outage.
//!
//! `scripts/test.sh` starts one chain for the run and exports `LOOSH_TEST_CHAIN_URL`; without it
//! (a plain `cargo test`) each test starts a chain of its own. The outage test always starts its
//! own, so that it can stop it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::chain::client::ChainClient;
use loosh_actors::chain::heartbeat::{ChainHeartbeat, HeartbeatArgs, HeartbeatMsg};
use loosh_actors::protocol::signature::Hotkey;
use loosh_actors::settings::ChainSettings;
use loosh_actors::validator_set::ValidatorSet;
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};
use ractor::Actor;
use serde_json::json;
use subxt::dynamic;
use subxt::utils::{AccountId32, MultiAddress};

const NETUID: u16 = 1;

/// The chain a test runs against: the one `scripts/test.sh` started, or one of the test's own.
enum TestChain {
    Shared(String),
    Own(OwnChain),
}

impl TestChain {
    fn get() -> Self {
        match std::env::var("LOOSH_TEST_CHAIN_URL") {
            Ok(url) => Self::Shared(url),
            Err(_) => Self::Own(OwnChain::start(free_port())),
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Shared(url) => url.clone(),
            Self::Own(own) => own.url.clone(),
        }
    }
}

/// A chain of the test's own, started with scripts/start-chain.sh; killed on drop.
struct OwnChain {
    url: String,
    pid: i32,
    port: u16,
}

impl OwnChain {
    fn start(port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start-chain.sh");
        let out = std::process::Command::new("bash").arg(script).arg(port.to_string()).output().expect("bash runs");
        assert!(out.status.success(), "start-chain.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (url, pid) = line.split_once(' ').expect("`URL PID`");
        Self { url: url.into(), pid: pid.parse().unwrap(), port }
    }

    fn stop(&mut self) {
        if self.pid == 0 {
            return;
        }
        let _ = std::process::Command::new("kill").arg(self.pid.to_string()).status();
        self.pid = 0;
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnChain {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn submit<P: subxt::tx::Payload>(chain: &ChainClient, call: P, signer: &subxt_signer::sr25519::Keypair) {
    let at = chain.api().at_current_block().await.unwrap();
    at.transactions()
        .sign_and_submit_then_watch_default(&call, signer)
        .await
        .unwrap()
        .wait_for_finalized_success()
        .await
        .unwrap();
}

/// Funds `hotkey` from //Alice and registers it on `NETUID` (//Alice pays the burn); its uid.
async fn register(chain: &ChainClient, hotkey: &Hotkey) -> u16 {
    // Tests register many hotkeys on one subnet in a few blocks: lift the per-block and
    // per-interval registration limits that would refuse them.
    set_storage(
        chain,
        json!({"SubtensorModule": {
            "MaxRegistrationsPerBlock": [[[NETUID], 1000]],
            "TargetRegistrationsPerInterval": [[[NETUID], 1000]],
            "RegistrationsThisInterval": [[[NETUID], 0]],
            "RegistrationsThisBlock": [[[NETUID], 0]],
        }}),
    )
    .await;
    let alice = subxt_signer::sr25519::dev::alice();
    let account = AccountId32(hotkey.account_id());
    let dest: MultiAddress<AccountId32, ()> = MultiAddress::Id(account);
    submit(chain, dynamic::transaction("Balances", "transfer_keep_alive", (dest, 10_000_000_000u128)), &alice).await;
    submit(chain, dynamic::transaction("SubtensorModule", "burned_register", (NETUID, account)), &alice).await;
    chain.uid_of(NETUID, hotkey.account_id()).await.unwrap().expect("registered")
}

async fn set_storage(chain: &ChainClient, storage: serde_json::Value) {
    chain.raw_request("dev_setStorage", json!([storage])).await.expect("dev_setStorage");
}

/// Gives exactly the validators in `uids` a permit on `NETUID`, and stretches the subnet's tempo
/// so that no epoch hands permits out again during the test.
async fn grant_permits(chain: &ChainClient, uids: &[u16]) {
    set_storage(chain, json!({"SubtensorModule": {"Tempo": [[[NETUID], 65000]]}})).await;
    let n = chain.metagraph(NETUID).await.unwrap().len().max(usize::from(*uids.iter().max().unwrap_or(&0)) + 1);
    let permits: Vec<bool> = (0..n).map(|i| uids.contains(&(i as u16))).collect();
    set_storage(chain, json!({"SubtensorModule": {"ValidatorPermit": [[[NETUID], permits]]}})).await;
}

/// Sets a hotkey's alpha stake on `NETUID` (rao).
async fn set_stake(chain: &ChainClient, hotkey: &Hotkey, rao: u64) {
    set_storage(chain, json!({"SubtensorModule": {"TotalHotkeyAlpha": [[[hotkey.ss58(), NETUID], rao]]}})).await;
}

/// A wallet directory holding `hotkey` as `miner/miner`; returns the HOME to use.
fn wallet_home(seed: [u8; 32], hotkey: &Hotkey) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".bittensor/wallets/miner/hotkeys");
    std::fs::create_dir_all(&dir).unwrap();
    let body = json!({"secretSeed": format!("0x{}", hex::encode(seed)), "ss58Address": hotkey.ss58()});
    std::fs::write(dir.join("miner"), body.to_string()).unwrap();
    home
}

fn new_hotkey() -> ([u8; 32], Hotkey) {
    let seed: [u8; 32] = rand::random();
    (seed, Hotkey::from_seed(seed).unwrap())
}

fn chain_env<'a>(url: &'a str, home: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HOME", home),
        ("SUBTENSOR_ADDRESS", url),
        ("SUBTENSOR_NETWORK", "local"),
        ("NETUID", "1"),
        ("ENABLE_VALIDATOR_WHITELIST", "true"),
        ("ALLOW_ALL_WHEN_EMPTY", "false"),
        ("CHAIN_POLL_SECONDS", "1"),
        ("METAGRAPH_SYNC_BLOCKS", "1"),
    ]
}

/// Registers a new hotkey as the subnet's only permitted validator, with 2 alpha of stake (over
/// the `MIN_VALIDATOR_STAKE=1` that [`start_on_chain`] sets); its seed.
async fn staked_validator(chain: &ChainClient) -> [u8; 32] {
    let (seed, validator) = new_hotkey();
    let uid = register(chain, &validator).await;
    grant_permits(chain, &[uid]).await;
    set_stake(chain, &validator, 2_000_000_000).await;
    seed
}

/// The miner binary on the chain at `url` with `miner`'s wallet, `MIN_VALIDATOR_STAKE=1` and
/// `extra`; the wallet's HOME lives as long as the returned directory.
fn start_on_chain(
    url: &str,
    model: &std::path::Path,
    seed: [u8; 32],
    miner: &Hotkey,
    extra: &[(&str, &str)],
) -> (MinerProcess, tempfile::TempDir) {
    let home = wallet_home(seed, miner);
    let home_str = home.path().to_str().unwrap().to_string();
    let mut env = chain_env(url, &home_str);
    env.push(("MIN_VALIDATOR_STAKE", "1"));
    env.extend_from_slice(extra);
    (MinerProcess::start(model, false, &env), home)
}

fn wait_metric(miner: &MinerProcess, name: &str, what: &str, ok: impl Fn(f64) -> bool) {
    let end = Instant::now() + Duration::from_secs(120);
    while !miner.metric(name).is_some_and(&ok) {
        assert!(Instant::now() < end, "timed out waiting for {what} ({name} = {:?})", miner.metric(name));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_post_ip_and_the_heartbeats_axon_repost_against_a_real_chain() {
    let test_chain = TestChain::get();
    let url = test_chain.url();
    let chain = ChainClient::connect(&url).await.unwrap();
    let (seed, miner) = new_hotkey();
    assert_eq!(chain.uid_of(NETUID, miner.account_id()).await.unwrap(), None, "a fresh hotkey is not registered");
    let uid = register(&chain, &miner).await;

    // post-ip, as an operator runs it.
    let home = wallet_home(seed, &miner);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
        .args(["post-ip", "--external-ip", "10.0.0.2", "--external-port", "8091"])
        .env_clear()
        .env("HOME", home.path())
        .env("SUBTENSOR_ADDRESS", &url)
        .env("NETUID", "1")
        .current_dir(home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("uid {uid}")) && stdout.contains("posted 10.0.0.2:8091"), "{stdout}");
    let axon = chain.axon_of(NETUID, miner.account_id()).await.unwrap().unwrap();
    assert_eq!(axon.addr(), Some(("10.0.0.2".parse().unwrap(), 8091)));

    // doctor sees the same: reachable chain, registered, the axon as configured, the worker's model.
    let model = tiny_model();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
        .arg("doctor")
        .env_clear()
        .env("HOME", home.path())
        .env("SUBTENSOR_ADDRESS", &url)
        .env("NETUID", "1")
        .env("AXON_EXTERNAL_IP", "10.0.0.2")
        .env("AXON_EXTERNAL_PORT", "8091")
        .env("MODEL_PATH", &model)
        .current_dir(home.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    for line in ["ok    wallet", "ok    chain", &format!("ok    registered   uid {uid}"), "ok    axon", "ok    worker"]
    {
        assert!(report.lines().any(|l| l.starts_with(line)), "{line:?} missing from:\n{report}");
    }
    // The test chain's clock is pinned, not the wall clock: doctor must notice and name the fix.
    assert!(report.lines().any(|l| l.contains("clock") && (l.starts_with("ok") || l.contains("NTP"))), "{report}");

    // The heartbeat wants another address; the chain's rate limit refuses it first...
    set_storage(&chain, json!({"SubtensorModule": {"ServingRateLimit": [[[NETUID], 10_000]]}})).await;
    let g = graph(vec![], 1, fast_restarts(0)).await;
    let auth = Arc::new(ValidatorAuth::with_policy(true, false, []));
    let settings = ChainSettings {
        url: url.clone(),
        netuid: NETUID,
        sync_every_blocks: 1,
        poll_every: Duration::from_secs(3600),
        min_validator_stake: 0,
        axon: Some(("10.0.0.3".parse().unwrap(), 8092)),
        reconnect_initial: Duration::from_millis(200),
        reconnect_max: Duration::from_secs(1),
    };
    let validators = ValidatorSet::new(auth, g.keys().clone(), g.metrics().clone(), g.known_peers.clone());
    let args = HeartbeatArgs { settings, hotkey: miner.clone(), validators };
    let (beat, _) = Actor::spawn(None, ChainHeartbeat, args).await.unwrap();
    ractor::call_t!(beat, HeartbeatMsg::SyncNow, 60_000).unwrap().unwrap();
    let status = ractor::call_t!(beat, HeartbeatMsg::Status, 5000).unwrap();
    assert!(status.rate_limited >= 1, "{status:?}");
    assert_eq!(status.our_uid, Some(uid), "the heartbeat found us in the metagraph");
    assert_eq!(
        chain.axon_of(NETUID, miner.account_id()).await.unwrap().unwrap().addr(),
        Some(("10.0.0.2".parse().unwrap(), 8091))
    );
    assert!(g.metrics().render().contains("loosh_axon_posts_total{result=\"rate_limited\"}"));

    // ...and once the window allows it, the heartbeat re-posts by itself.
    // (1, not 0: chopsticks treats a zero as "back to the default" of 50.)
    set_storage(&chain, json!({"SubtensorModule": {"ServingRateLimit": [[[NETUID], 1]]}})).await;
    ractor::call_t!(beat, HeartbeatMsg::SyncNow, 60_000).unwrap().unwrap();
    let status = ractor::call_t!(beat, HeartbeatMsg::Status, 5000).unwrap();
    assert_eq!(
        chain.axon_of(NETUID, miner.account_id()).await.unwrap().unwrap().addr(),
        Some(("10.0.0.3".parse().unwrap(), 8092)),
        "{status:?}"
    );
    let status = ractor::call_t!(beat, HeartbeatMsg::Status, 5000).unwrap();
    assert_eq!(status.posted_axon, Some(("10.0.0.3".parse().unwrap(), 8092)));
    // Already matching: no further post.
    let posts_before = g.metrics().render();
    ractor::call_t!(beat, HeartbeatMsg::SyncNow, 60_000).unwrap().unwrap();
    assert_eq!(
        posts_before.lines().find(|l| l.starts_with("loosh_axon_posts_total{result=\"ok\"}")),
        g.metrics()
            .render()
            .lines()
            .find(|l| l.starts_with("loosh_axon_posts_total{result=\"ok\"}"))
            .map(|l| l.to_string())
            .as_deref()
    );
    beat.stop(None);
    g.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permitted_validator_is_served_and_a_plain_neuron_gets_403() {
    let test_chain = TestChain::get();
    let url = test_chain.url();
    let model = tiny_model();
    let chain = ChainClient::connect(&url).await.unwrap();
    let (miner_seed, miner) = new_hotkey();
    let (plain_seed, plain) = new_hotkey();
    register(&chain, &miner).await;
    register(&chain, &plain).await;
    // This runtime hands every neuron of a small subnet a permit again at each new block, so the
    // plain neuron is also told apart by stake: MIN_VALIDATOR_STAKE=1 alpha, which only the
    // validator holds.
    let validator_seed = staked_validator(&chain).await;

    let (process, _home) = start_on_chain(&url, &model, miner_seed, &miner, &[]);
    wait_metric(&process, "loosh_chain_validators", "the metagraph sync", |v| v >= 1.0);
    assert!(process.metric("loosh_uid").is_some_and(|v| v >= 0.0));

    let mut good = ValidatorClient::new(&process.url, Hotkey::from_seed(validator_seed).unwrap());
    good.handshake().await.expect("a permitted validator may key-exchange");
    let (reply, _) = good.challenge(&challenge_body("hi", 4, 0.7)).await.unwrap();
    assert!(reply.usage.completion_tokens >= 1);

    let mut stranger = ValidatorClient::new(&process.url, Hotkey::from_seed(plain_seed).unwrap());
    match stranger.handshake().await {
        Err(ClientError::Status { status: 403, body, .. }) => {
            assert!(body.contains("Validator hotkey not recognized."))
        }
        other => panic!("a plain neuron must get 403, got {other:?}"),
    }

    drop(process);
}

/// Issue 29: the metagraph's axon of a validator is where that validator's exchanges come from.
/// Under `STRICT_VALIDATOR_ADDRESSES` its hotkey is taken from that address only: an exchange it
/// signed, arriving from elsewhere (a relayer on 127.0.0.2), is refused with 403 and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_pins_a_validator_to_the_address_its_axon_gives() {
    let test_chain = TestChain::get();
    let url = test_chain.url();
    let model = tiny_model();
    let chain = ChainClient::connect(&url).await.unwrap();
    let (miner_seed, miner) = new_hotkey();
    register(&chain, &miner).await;
    let validator_seed = staked_validator(&chain).await;
    let validator = Hotkey::from_seed(validator_seed).unwrap();
    // The validator's axon on loopback. `serve_axon` refuses a loopback address
    // (InvalidIpAddress), so the axon is written as the chain stores it: 127.0.0.1 as IPv4.
    let axon = json!({"block": 1, "version": 1, "ip": u32::from(std::net::Ipv4Addr::LOCALHOST), "port": 9000,
        "ip_type": 4, "protocol": 4, "placeholder1": 0, "placeholder2": 0});
    set_storage(&chain, json!({"SubtensorModule": {"Axons": [[[NETUID, validator.ss58()], axon]]}})).await;
    let posted = chain.axon_of(NETUID, validator.account_id()).await.unwrap().and_then(|a| a.addr());
    assert_eq!(posted, Some(("127.0.0.1".parse().unwrap(), 9000)), "the chain holds the validator's axon");

    let (process, _home) = start_on_chain(&url, &model, miner_seed, &miner, &[("STRICT_VALIDATOR_ADDRESSES", "true")]);
    wait_metric(&process, "loosh_chain_validator_axons", "the validators' axons", |v| v >= 1.0);

    let mut home_client = ValidatorClient::new(&process.url, Hotkey::from_seed(validator_seed).unwrap());
    home_client.handshake().await.expect("the validator exchanges from the address its axon gives");
    let (reply, _) = home_client.challenge(&challenge_body("hi", 4, 0.7)).await.unwrap();
    assert!(reply.usage.completion_tokens >= 1);

    let elsewhere = Some("127.0.0.2".parse().unwrap());
    let mut relayer =
        ValidatorClient::from_address(&process.url, Hotkey::from_seed(validator_seed).unwrap(), elsewhere);
    match relayer.handshake().await {
        Err(ClientError::Status { status: 403, body, .. }) => assert!(body.contains("reported addresses"), "{body}"),
        other => panic!("an exchange from an address the chain does not report must get 403, got {other:?}"),
    }
    assert_eq!(process.metric("loosh_handshakes_total{outcome=\"address_not_reported\"}"), Some(1.0));
    drop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_miner_keeps_serving_through_a_chain_outage_and_reconnects() {
    let model = tiny_model();
    let port = free_port();
    let mut own = OwnChain::start(port);
    let chain = ChainClient::connect(&own.url).await.unwrap();
    let (miner_seed, miner) = new_hotkey();
    let (validator_seed, validator) = new_hotkey();
    register(&chain, &miner).await;
    let validator_uid = register(&chain, &validator).await;
    grant_permits(&chain, &[validator_uid]).await;
    let home = wallet_home(miner_seed, &miner);
    let home_str = home.path().to_str().unwrap().to_string();
    let url = own.url.clone();
    let process = MinerProcess::start(&model, false, &chain_env(&url, &home_str));
    wait_metric(&process, "loosh_chain_validators", "the metagraph sync", |v| v >= 1.0);
    let mut client = ValidatorClient::new(&process.url, Hotkey::from_seed(validator_seed).unwrap());
    client.handshake().await.unwrap();

    own.stop();
    wait_metric(&process, "loosh_chain_connected", "the outage to be seen", |v| v == 0.0);
    // Still serving, with the last good metagraph.
    let (reply, _) = client.challenge(&challenge_body("still there?", 4, 0.7)).await.unwrap();
    assert!(reply.usage.completion_tokens >= 1);
    let mut fresh = ValidatorClient::new(&process.url, Hotkey::from_seed(validator_seed).unwrap());
    fresh.handshake().await.expect("the validator set survives the outage");
    assert!(process.metric("loosh_chain_outages_total").is_some_and(|v| v >= 1.0));

    let restarted = OwnChain::start(port);
    wait_metric(&process, "loosh_chain_connected", "the reconnection", |v| v == 1.0);
    drop(restarted);
    drop(process);
}

/// The miner binary with `vars` (and PATH), its stdout lines collected; not waited for.
fn spawn_miner(vars: &[(&str, &str)]) -> (std::process::Child, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_loosh-miner"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let (stdout, log) = (child.stdout.take().unwrap(), Arc::new(std::sync::Mutex::new(Vec::new())));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, log)
}

/// Forwards every connection to `listener` to `to`, both ways, until the test ends: the chain
/// "comes back" when the test opens it.
fn forward(listener: std::net::TcpListener, to: std::net::SocketAddr) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let (Ok(a), Ok(b)) = (conn, std::net::TcpStream::connect(to)) else { continue };
            let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut &a, &mut &b2));
            std::thread::spawn(move || std::io::copy(&mut &b, &mut &a2));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_started_during_a_chain_outage_waits_for_the_chain_and_then_serves() {
    let test_chain = TestChain::get();
    let url = test_chain.url();
    let chain = ChainClient::connect(&url).await.unwrap();
    let (miner_seed, miner) = new_hotkey();
    let (validator_seed, validator) = new_hotkey();
    register(&chain, &miner).await;
    let validator_uid = register(&chain, &validator).await;
    grant_permits(&chain, &[validator_uid]).await;
    let home = wallet_home(miner_seed, &miner);
    let home_str = home.path().to_str().unwrap().to_string();
    let chain_addr: std::net::SocketAddr = url.trim_start_matches("ws://").parse().unwrap();
    // The address the miner is given: nothing listens there until the chain "comes back".
    let gate_port = free_port();
    let gate_url = format!("ws://127.0.0.1:{gate_port}");
    let (port, ops_port) = (free_port().to_string(), free_port().to_string());
    let model = tiny_model();
    let mut vars = chain_env(&gate_url, &home_str);
    vars.extend([
        ("MODEL_PATH", model.to_str().unwrap()),
        ("API_HOST", "127.0.0.1"),
        ("API_PORT", port.as_str()),
        ("METRICS_PORT", ops_port.as_str()),
        ("LLAMA_THREADS", "1"),
        ("MAX_MODEL_LEN", "2048"),
    ]);
    let (mut child, log) = spawn_miner(&vars);
    let api = format!("127.0.0.1:{port}");
    let ops = format!("127.0.0.1:{ops_port}");
    let get = |addr: &str, path: &str| loosh_miner::client::ops::get(addr, path, Duration::from_secs(5));
    let logged = |needle: &str| log.lock().unwrap().iter().filter(|l| l.contains(needle)).count();
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(Instant::now() < end, "timed out waiting for {what}:\n{}", log.lock().unwrap().join("\n"));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Down: it retries, loads its worker, and tells validators it is unavailable.
    wait("retries with the worker ready", &|| {
        logged("chain unreachable at start; retrying") >= 3 && get(&ops, "/health").is_ok_and(|b| b.contains("Ready"))
    });
    let availability = get(&api, "/availability").unwrap();
    assert!(availability.contains("\"available\":false"), "{availability}");
    assert!(child.try_wait().unwrap().is_none(), "the miner is still running");

    // Back: the next retry reaches it (the backoff is at most a minute).
    forward(std::net::TcpListener::bind(("127.0.0.1", gate_port)).unwrap(), chain_addr);
    wait("registration confirmed and available", &|| {
        logged("registered on the subnet") == 1
            && get(&api, "/availability").is_ok_and(|b| b.contains("\"available\":true"))
    });
    let url_api = format!("http://{api}");
    let mut v = ValidatorClient::new(&url_api, Hotkey::from_seed(validator_seed).unwrap());
    let end = Instant::now() + Duration::from_secs(60);
    // The metagraph's first sync admits the permitted validator.
    while v.handshake().await.is_err() {
        assert!(Instant::now() < end, "the permitted validator was never admitted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (reply, _) = v.challenge(&challenge_body("hi", 4, 0.7)).await.unwrap();
    assert!(reply.usage.completion_tokens >= 1);
    // SAFETY: kill takes a pid and a signal number; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // An unregistered hotkey is a configuration error (78, not restarted), with the hint for
    // this chain (SUBTENSOR_ADDRESS, which btcli takes as its network) and netuid.
    let (seed, stranger) = new_hotkey();
    let home = wallet_home(seed, &stranger);
    let home_str = home.path().to_str().unwrap().to_string();
    let mut vars = chain_env(&url, &home_str);
    vars.extend([
        ("MODEL_PATH", model.to_str().unwrap()),
        ("API_HOST", "127.0.0.1"),
        ("API_PORT", port.as_str()),
        ("METRICS_PORT", ops_port.as_str()),
        ("LLAMA_THREADS", "1"),
        ("MAX_MODEL_LEN", "2048"),
    ]);
    let (mut child, log) = spawn_miner(&vars);
    let status = child.wait().unwrap();
    let text = log.lock().unwrap().join("\n");
    assert_eq!(status.code(), Some(78), "{text}");
    let hint = format!("btcli subnet register --subtensor.network {url} --netuid 1 ");
    assert!(text.contains(&hint), "{text}");
}
