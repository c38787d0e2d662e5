//! `/availability` (what validators poll), `/health` (liveness) and `/metrics` (Prometheus).

use actix_web::{get, web, HttpRequest, HttpResponse};
use loosh_actors::front_door::rate_limit::Route;

use super::error::{rate_limited, ApiError};
use serde_json::json;

use super::state::AppState;

/// What a validator's selection poll hears: `true` whenever this miner can answer its challenges,
/// `false` (with the reason) only when no worker is ready, admission is closed (starting, draining,
/// waiting for the chain or a first validator set), or the asking validator is not allowed here.
/// Always 200: the validator treats anything but `200 {"available": true}` as unavailable anyway.
///
/// Not "at capacity": `false` takes the miner out of that validator's selection until its next
/// poll, and 3 h without `true` zeroes its weight, while a challenge refused with 503 costs nothing
/// (SCORING.md). And never limited for a validator polling from an address it has completed a
/// signed key exchange from: a 429 here reads as unavailable. The answer is a read of published
/// state (no actor message, nothing queued behind challenges).
#[get("/availability")]
pub async fn availability(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let peer = super::client_ip(&state, &req);
    let claimed = super::caller::claimed_hotkey(&req);
    let allowed = claimed.is_some_and(|h| state.door.auth.is_allowed(h));
    let proven = allowed && claimed.zip(peer).is_some_and(|(h, ip)| state.door.known_peers.is_known(h, ip));
    if !proven {
        state.door.check_ip_rate(Route::Availability, peer, allowed).map_err(rate_limited)?;
    }
    if claimed.is_some() && !allowed {
        return Ok(unavailable("this validator is not allowed on this miner"));
    }
    let reason = unavailable_reason(&state);
    if let Some(hotkey) = claimed.filter(|h| state.door.auth.is_listed(h)) {
        state.door.metrics().validators.availability_answered(hotkey, reason.is_none());
    }
    Ok(match reason {
        None => HttpResponse::Ok().json(json!({ "available": true })),
        Some(reason) => unavailable(reason),
    })
}

fn unavailable(reason: &str) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "available": false, "reason": reason }))
}

/// Why `/availability` would say `false` now (`None`: it says `true`); kept in `loosh_available`.
fn unavailable_reason(state: &AppState) -> Option<&'static str> {
    let reason = state.door.auth.unavailable_reason().or_else(|| state.door.status_now().availability().err());
    state.door.metrics().available.set(i64::from(reason.is_none()));
    reason
}

/// Liveness, with each worker's phase for operators: 503 once no worker has been ready for longer
/// than `HEALTH_GRACE_SECONDS`, so that Docker's HEALTHCHECK (and anything else that reads it)
/// sees a miner whose every worker is down as unhealthy, not as a process that answers.
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let workers = state.door.workers().await;
    let any_ready = workers.iter().any(|w| matches!(w.phase, loosh_actors::front_door::WorkerPhase::Ready));
    let none_ready_for = state.ready_clock.none_ready_for(any_ready, state.started);
    let healthy = none_ready_for <= state.settings.health_grace;
    let workers: Vec<_> = workers
        .into_iter()
        .map(|w| json!({ "name": w.name, "phase": format!("{:?}", w.phase), "restarts": w.restarts }))
        .collect();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "uptime_s": state.started.elapsed().as_secs(),
        "hotkey": state.miner_hotkey,
        "no_worker_ready_for_s": none_ready_for.as_secs(),
        "workers": workers,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = state.door.metrics();
    m.key_sessions.set(state.door.keys().sessions() as i64);
    unavailable_reason(&state);
    for validator in state.door.auth.listed() {
        m.validators.listed(&validator);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(m.render())
}
