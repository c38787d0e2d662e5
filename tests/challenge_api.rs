//! The Challenge API poller: signed requests, and the list it returns joining the allowed set.
//! The real Challenge API is on the internet, out of reach here, so the server is a stand-in in
//! this test: an actix handler that checks the signature the way PROTOCOL.md describes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use loosh_actors::authorization::ValidatorAuth;
use loosh_actors::chain::challenge_api::{ChallengeApiArgs, ChallengeApiMsg, ChallengeApiPoller};
use loosh_actors::front_door::challenge::ChallengeError;
use loosh_actors::metrics::Metrics;
use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::signature::{verify_sr25519, Hotkey};
use loosh_actors::session::registry::KeyStore;
use loosh_actors::settings::SessionSettings;
use loosh_actors::validator_set::ValidatorSet;
use ractor::Actor;
use serde_json::{json, Value};

type Listing = Arc<Mutex<Value>>;

async fn active_hotkeys(req: HttpRequest, listing: web::Data<Listing>) -> HttpResponse {
    let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (hotkey, nonce, signature) = (h("X-Hotkey"), h("X-Nonce"), h("X-Signature"));
    if nonce.parse::<u64>().is_err() || verify_sr25519(&hotkey, &format!("{nonce}:{hotkey}"), &signature).is_err() {
        return HttpResponse::Unauthorized().json(json!({"detail": "bad signature"}));
    }
    match listing.lock().unwrap().clone() {
        // A listing of null stands for the API failing.
        Value::Null => HttpResponse::ServiceUnavailable().json(json!({"detail": "down"})),
        list => HttpResponse::Ok().json(list),
    }
}

/// The stand-in Challenge API, serving `listing`; its address and its handle (to stop it).
fn stand_in_api(listing: Listing) -> (std::net::SocketAddr, actix_web::dev::ServerHandle) {
    let data = web::Data::new(listing);
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route("/validators/active-hotkeys", web::get().to(active_hotkeys))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (addr, handle)
}

/// The `/metrics` lines of `validator`'s own series.
fn series_of(metrics: &Metrics, validator: &str) -> Vec<String> {
    let label = format!("validator=\"{validator}\"");
    metrics.render().lines().filter(|l| l.contains(&label)).map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_list_joins_the_allowed_set_and_leaving_it_revokes_keys() {
    let (v1, v2) = (Hotkey::ephemeral(), Hotkey::ephemeral());
    let listing: Listing = Arc::new(Mutex::new(json!([{"hotkey_ss58": v1.ss58(), "ip": "203.0.113.5"}, v2.ss58()])));
    let (addr, handle) = stand_in_api(listing.clone());

    let keys = KeyStore::spawn(SessionSettings::default()).await.unwrap();
    let auth = Arc::new(ValidatorAuth::with_policy(true, false, []));
    let metrics = Arc::new(Metrics::new());
    let args = ChallengeApiArgs {
        url: format!("http://{addr}"),
        hotkey: Hotkey::ephemeral(),
        every: Duration::from_secs(3600),
        validators: ValidatorSet::new(auth.clone(), keys.clone(), metrics.clone(), Default::default()),
    };
    let (poller, _) = Actor::spawn(None, ChallengeApiPoller, args).await.unwrap();

    assert_eq!(ractor::call_t!(poller, ChallengeApiMsg::PollNow, 15_000).unwrap(), Ok(2));
    assert!(auth.is_allowed(v1.ss58()) && auth.is_allowed(v2.ss58()));
    assert!(!auth.is_allowed(Hotkey::ephemeral().ss58()));
    keys.spend_nonce(v1.ss58(), "n", Duration::from_secs(60)).await.unwrap();
    keys.store_key(v1.ss58(), "u", FernetKey::generate().1, None).await.unwrap();

    // v1 leaves the list: it is no longer allowed and its keys are gone.
    *listing.lock().unwrap() = json!({"validators": [{"hotkey_ss58": v2.ss58()}]});
    assert_eq!(ractor::call_t!(poller, ChallengeApiMsg::PollNow, 15_000).unwrap(), Ok(1));
    assert!(!auth.is_allowed(v1.ss58()) && auth.is_allowed(v2.ss58()));
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while keys.lookup(v1.ss58(), "u").is_some() {
        assert!(std::time::Instant::now() < end, "v1's key was not revoked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // An empty answer is treated as a failed read, not as every validator leaving: the last good
    // list stays (with ALLOW_ALL_WHEN_EMPTY it would otherwise let everyone in).
    *listing.lock().unwrap() = json!([]);
    assert_eq!(ractor::call_t!(poller, ChallengeApiMsg::PollNow, 15_000).unwrap(), Ok(0));
    assert!(auth.is_allowed(v2.ss58()), "an empty list does not replace the last good one");
    assert!(keys.lookup(v1.ss58(), "u").is_none());

    // The API failing keeps the last good list. (A failing answer, not a stopped server: a stopped
    // actix server may still answer on a kept-alive connection for a moment, which made this flaky.)
    *listing.lock().unwrap() = Value::Null;
    assert!(ractor::call_t!(poller, ChallengeApiMsg::PollNow, 15_000).unwrap().is_err());
    assert!(auth.is_allowed(v2.ss58()));
    assert!(metrics.render().contains("loosh_challenge_api_polls_total{result=\"error\"} 1"));
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_dropped_from_the_active_list_loses_its_key_its_metrics_and_its_proven_address() {
    let (v1, v2) = (Hotkey::ephemeral(), Hotkey::ephemeral());
    let listing: Listing = Arc::new(Mutex::new(json!([v1.ss58(), v2.ss58()])));
    let (addr, handle) = stand_in_api(listing.clone());
    let g =
        common::graph_with_auth(vec![], 1, common::fast_restarts(0), ValidatorAuth::with_policy(true, false, [])).await;
    let args = ChallengeApiArgs {
        url: format!("http://{addr}"),
        hotkey: Hotkey::ephemeral(),
        every: Duration::from_secs(3600),
        validators: g.validators(),
    };
    let (poller, _) = Actor::spawn(None, ChallengeApiPoller, args).await.unwrap();
    assert_eq!(ractor::call_t!(poller, ChallengeApiMsg::PollNow, 15_000).unwrap(), Ok(2));

    // Both validators hold a key and have been served, as the HTTP routes record it.
    let key = FernetKey::generate().1;
    let home = std::net::IpAddr::from([203, 0, 113, 5]);
    for v in [&v1, &v2] {
        g.keys().spend_nonce(v.ss58(), "n", Duration::from_secs(60)).await.unwrap();
        g.keys().store_key(v.ss58(), "u", key.clone(), None).await.unwrap();
        g.metrics().validators.key_exchanged(v.ss58());
        g.metrics().validators.challenge(v.ss58(), "ok", 0.5);
        g.known_peers.record(v.ss58(), home);
    }
    assert!(series_of(g.metrics(), v1.ss58()).iter().any(|l| l.starts_with("loosh_validator_challenges_total")));

    // v1 leaves the list: its key is gone, its challenge is refused, and its series leave /metrics.
    *listing.lock().unwrap() = json!([v2.ss58()]);
    assert_eq!(ractor::call_t!(poller, ChallengeApiMsg::PollNow, 15_000).unwrap(), Ok(1));
    assert!(g.keys().lookup(v1.ss58(), "u").is_none(), "v1's key reads as live after it left the list");
    let token = key.encrypt(br#"{"prompt": "hello", "max_tokens": 8}"#);
    assert_eq!(
        g.answer_challenge(v1.ss58(), "u", token.as_bytes(), Instant::now()).await,
        Err(ChallengeError::Forbidden),
        "a challenge from a validator that left the list is refused (403)"
    );
    assert_eq!(series_of(g.metrics(), v1.ss58()), Vec::<String>::new(), "v1's series outlived its admission");
    assert!(!g.known_peers.is_known(v1.ss58(), home), "v1's proven address outlived its admission");

    // v2, still listed, keeps its key and its series.
    assert!(g.keys().lookup(v2.ss58(), "u").is_some());
    assert!(g.known_peers.is_known(v2.ss58(), home));
    assert!(series_of(g.metrics(), v2.ss58()).iter().any(|l| l.starts_with("loosh_validator_challenges_total")));

    poller.stop(None);
    g.stop();
    handle.stop(false).await;
}
