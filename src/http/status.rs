//! `/availability` (what validators poll), `/health` (liveness) and `/metrics` (Prometheus).

use actix_web::{get, web, HttpRequest, HttpResponse};
use loosh_actors::front_door::rate_limit::Route;

use super::error::{rate_limited, ApiError};
use serde_json::json;

use super::state::AppState;

/// `true` only when a challenge would be admitted right now; otherwise the reason. Always 200, as
/// the validator treats anything but `200 {"available": true}` as unavailable anyway.
#[get("/availability")]
pub async fn availability(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    state
        .graph
        .check_ip_rate(Route::Availability, peer, super::key_exchange::names_a_validator(&state, &req))
        .map_err(rate_limited)?;
    Ok(availability_now(&state))
}

fn availability_now(state: &AppState) -> HttpResponse {
    if let Some(reason) = state.graph.auth.unavailable_reason() {
        return HttpResponse::Ok().json(json!({ "available": false, "reason": reason }));
    }
    match state.graph.status_now().availability() {
        Ok(()) => HttpResponse::Ok().json(json!({ "available": true })),
        Err(reason) => HttpResponse::Ok().json(json!({ "available": false, "reason": reason })),
    }
}

/// Liveness: the process answers. Includes each worker's phase for operators.
#[get("/health")]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let workers: Vec<_> = state
        .graph
        .workers()
        .await
        .into_iter()
        .map(|w| json!({ "name": w.name, "phase": format!("{:?}", w.phase), "restarts": w.restarts }))
        .collect();
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "uptime_s": state.started.elapsed().as_secs(),
        "hotkey": state.miner_hotkey,
        "workers": workers,
    }))
}

#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.graph.metrics;
    m.key_sessions.set(state.graph.keys.sessions() as i64);
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(m.render())
}
