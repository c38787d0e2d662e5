//! Key sessions as validators see them: one actor per validator, keys with a TTL, nonces spent once,
//! bounded memory.

use std::time::{Duration, Instant};

use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::session::key_session::StoreError;
use loosh_actors::session::registry::{KeyStore, KeyStoreError};
use loosh_actors::settings::SessionSettings;

const WINDOW: Duration = Duration::from_secs(330);

async fn store(settings: SessionSettings) -> KeyStore {
    KeyStore::spawn(settings).await.unwrap()
}

fn key() -> FernetKey {
    FernetKey::generate().1
}

/// A whole successful exchange as the front door runs it: nonce first, then the key.
async fn exchange(keys: &KeyStore, hotkey: &str, uuid: &str, nonce: &str) -> Result<(), KeyStoreError> {
    exchange_from(keys, hotkey, uuid, nonce, HOME).await
}

/// The validator's own address, and another (a relayer's) in the tests below.
const HOME: [u8; 4] = [127, 0, 0, 1];
const RELAYER: [u8; 4] = [127, 0, 0, 2];

async fn exchange_from(
    keys: &KeyStore,
    hotkey: &str,
    uuid: &str,
    nonce: &str,
    from: [u8; 4],
) -> Result<(), KeyStoreError> {
    keys.spend_nonce(hotkey, nonce, WINDOW).await?;
    keys.store_key(hotkey, uuid, key(), Some(std::net::IpAddr::from(from))).await
}

#[tokio::test]
async fn a_validator_that_replays_a_nonce_is_refused_and_the_key_store_is_unchanged() {
    let keys = store(SessionSettings::default()).await;
    exchange(&keys, "v1", "uuid-1", "nonce-1").await.unwrap();
    let before = keys.snapshot("v1").await;
    assert_eq!(keys.spend_nonce("v1", "nonce-1", WINDOW).await, Err(KeyStoreError::Refused(StoreError::ReplayedNonce)));
    assert_eq!(keys.snapshot("v1").await, before);
    assert!(keys.lookup("v1", "uuid-2").is_none());
    assert!(keys.lookup("v1", "uuid-1").is_some());
}

#[tokio::test]
async fn each_validator_has_its_own_session_with_several_live_keys() {
    let keys = store(SessionSettings::default()).await;
    exchange(&keys, "v1", "a", "n1").await.unwrap();
    exchange(&keys, "v1", "b", "n2").await.unwrap();
    exchange(&keys, "v2", "a", "n1").await.unwrap(); // the same nonce is fine for another validator
    assert_eq!(keys.sessions(), 2);
    assert_eq!(keys.snapshot("v1").await.live_keys, 2);
    assert!(keys.lookup("v1", "a").is_some() && keys.lookup("v1", "b").is_some());
    assert!(keys.lookup("v3", "a").is_none(), "no session, no key");
    keys.revoke("v1");
    assert!(keys.lookup("v1", "a").is_none());
    assert!(keys.lookup("v2", "a").is_some(), "revoking one validator leaves the others");
}

#[tokio::test]
async fn keys_live_for_the_ttl_plus_grace_then_the_idle_session_goes_away() {
    let settings = SessionSettings {
        key_ttl: Duration::from_millis(300),
        key_grace: Duration::from_millis(200),
        sweep_every: Duration::from_millis(50),
        ..SessionSettings::default()
    };
    let keys = store(settings).await;
    let stored = Instant::now();
    keys.spend_nonce("v1", "n", Duration::from_millis(300)).await.unwrap();
    keys.store_key("v1", "u", key(), None).await.unwrap();
    assert!(keys.lookup("v1", "u").is_some());
    let end = stored + Duration::from_secs(10);
    while keys.lookup("v1", "u").is_some() {
        assert!(Instant::now() < end, "the key never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stored.elapsed() >= Duration::from_millis(500), "the key outlived its TTL by the grace period");
    while keys.sessions() > 0 {
        assert!(Instant::now() < end, "the idle session never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A later exchange simply makes a new session.
    exchange(&keys, "v1", "u2", "n2").await.unwrap();
    assert!(keys.lookup("v1", "u2").is_some());
}

#[tokio::test]
async fn a_nonce_is_remembered_for_as_long_as_it_was_asked_to_be() {
    // The front door asks for max(now, timestamp) + window: a future-stamped exchange is remembered
    // longer than a present one.
    let settings = SessionSettings { sweep_every: Duration::from_millis(20), ..SessionSettings::default() };
    let keys = store(settings).await;
    keys.spend_nonce("v1", "short", Duration::from_millis(100)).await.unwrap();
    keys.spend_nonce("v1", "long", Duration::from_secs(300)).await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while keys.spend_nonce("v1", "short", Duration::from_secs(300)).await.is_err() {
        assert!(Instant::now() < end, "the short-lived nonce was never forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        keys.spend_nonce("v1", "long", WINDOW).await,
        Err(KeyStoreError::Refused(StoreError::ReplayedNonce)),
        "the long-lived nonce outlives the short one"
    );
}

#[tokio::test]
async fn nonce_and_key_memory_is_bounded_per_validator() {
    let settings = SessionSettings { max_nonces: 3, max_keys: 2, ..SessionSettings::default() };
    let keys = store(settings).await;
    for i in 0..3 {
        exchange(&keys, "v1", &format!("u{i}"), &format!("n{i}")).await.unwrap();
    }
    assert_eq!(keys.snapshot("v1").await.live_keys, 2, "the oldest key made room");
    assert!(keys.lookup("v1", "u0").is_none());
    assert_eq!(
        keys.spend_nonce("v1", "n9", WINDOW).await,
        Err(KeyStoreError::Refused(StoreError::TooManyExchanges)),
        "a full nonce memory refuses rather than forgetting a nonce inside its window"
    );
}

#[tokio::test]
async fn a_key_remembers_its_exchange_address_and_another_address_cannot_take_its_uuid() {
    let keys = store(SessionSettings::default()).await;
    exchange(&keys, "v1", "u", "n1").await.unwrap();
    assert_eq!(keys.lookup("v1", "u").unwrap().origin, Some(std::net::IpAddr::from(HOME)));
    assert_eq!(
        exchange_from(&keys, "v1", "u", "n2", RELAYER).await,
        Err(KeyStoreError::Refused(StoreError::UuidTaken)),
        "a relayed exchange cannot replace the validator's live key"
    );
    assert_eq!(keys.lookup("v1", "u").unwrap().origin, Some(std::net::IpAddr::from(HOME)));
    exchange(&keys, "v1", "u", "n3").await.expect("the validator itself may re-key the same uuid");
}

#[tokio::test]
async fn exchanges_from_one_address_push_out_only_that_addresss_keys() {
    let settings = SessionSettings { max_keys: 3, ..SessionSettings::default() };
    let keys = store(settings).await;
    exchange(&keys, "v1", "home", "n0").await.unwrap();
    for i in 0..10 {
        exchange_from(&keys, "v1", &format!("relayed-{i}"), &format!("r{i}"), RELAYER).await.unwrap();
    }
    assert!(keys.lookup("v1", "home").is_some(), "the validator's own key survived the relayer's exchanges");
    assert_eq!(keys.snapshot("v1").await.live_keys, 3);
}
