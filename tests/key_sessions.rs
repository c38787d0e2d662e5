//! Key sessions as validators see them: one actor per validator, keys with a TTL, replay-proof
//! nonces, bounded memory.

use std::time::{Duration, Instant};

use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::session::key_session::StoreError;
use loosh_actors::session::registry::{KeyRegistry, KeyStore, KeyStoreError, SessionIndex};
use loosh_actors::session::SessionSettings;
use ractor::Actor;

async fn store(settings: SessionSettings) -> KeyStore {
    let index: SessionIndex = Default::default();
    let (registry, _) = Actor::spawn(None, KeyRegistry, (settings, index.clone())).await.unwrap();
    KeyStore::new(registry, index)
}

fn key() -> FernetKey {
    FernetKey::generate().1
}

#[tokio::test]
async fn a_validator_that_replays_a_nonce_is_refused_and_the_key_store_is_unchanged() {
    let keys = store(SessionSettings::default()).await;
    keys.store("v1", "uuid-1", "nonce-1", key()).await.unwrap();
    let before = keys.snapshot("v1").await;
    assert!(keys.nonce_seen("v1", "nonce-1").await);
    assert_eq!(
        keys.store("v1", "uuid-2", "nonce-1", key()).await,
        Err(KeyStoreError::Refused(StoreError::ReplayedNonce))
    );
    assert_eq!(keys.snapshot("v1").await, before);
    assert!(keys.lookup("v1", "uuid-2").await.is_none());
    assert!(keys.lookup("v1", "uuid-1").await.is_some());
}

#[tokio::test]
async fn each_validator_has_its_own_session_with_several_live_keys() {
    let keys = store(SessionSettings::default()).await;
    keys.store("v1", "a", "n1", key()).await.unwrap();
    keys.store("v1", "b", "n2", key()).await.unwrap();
    keys.store("v2", "a", "n1", key()).await.unwrap(); // the same nonce is fine for another validator
    assert_eq!(keys.sessions(), 2);
    assert_eq!(keys.snapshot("v1").await.live_keys, 2);
    assert!(keys.lookup("v1", "a").await.is_some() && keys.lookup("v1", "b").await.is_some());
    assert!(keys.lookup("v3", "a").await.is_none(), "no session, no key");
    keys.revoke("v1");
    assert!(keys.lookup("v1", "a").await.is_none());
    assert!(keys.lookup("v2", "a").await.is_some(), "revoking one validator leaves the others");
}

#[tokio::test]
async fn keys_live_for_the_ttl_plus_grace_then_the_idle_session_goes_away() {
    let settings = SessionSettings {
        key_ttl: Duration::from_millis(300),
        key_grace: Duration::from_millis(200),
        nonce_window: Duration::from_millis(300),
        sweep_every: Duration::from_millis(50),
        ..SessionSettings::default()
    };
    let keys = store(settings).await;
    let stored = Instant::now();
    keys.store("v1", "u", "n", key()).await.unwrap();
    assert!(keys.lookup("v1", "u").await.is_some());
    let end = stored + Duration::from_secs(10);
    while keys.lookup("v1", "u").await.is_some() {
        assert!(Instant::now() < end, "the key never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stored.elapsed() >= Duration::from_millis(500), "the key outlived its TTL by the grace period");
    while keys.sessions() > 0 {
        assert!(Instant::now() < end, "the idle session never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A later exchange simply makes a new session.
    keys.store("v1", "u2", "n2", key()).await.unwrap();
    assert!(keys.lookup("v1", "u2").await.is_some());
}

#[tokio::test]
async fn nonce_and_key_memory_is_bounded_per_validator() {
    let settings = SessionSettings { max_nonces: 3, max_keys: 2, ..SessionSettings::default() };
    let keys = store(settings).await;
    for i in 0..3 {
        keys.store("v1", &format!("u{i}"), &format!("n{i}"), key()).await.unwrap();
    }
    assert_eq!(keys.snapshot("v1").await.live_keys, 2, "the oldest key made room");
    assert!(keys.lookup("v1", "u0").await.is_none());
    assert_eq!(
        keys.store("v1", "u9", "n9", key()).await,
        Err(KeyStoreError::Refused(StoreError::TooManyExchanges)),
        "a full nonce memory refuses rather than forgetting a nonce inside its window"
    );
}
