//! `/availability` (what validators poll), `/health` (liveness) and `/metrics` (Prometheus).

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use super::state::AppState;

/// `true` only when a challenge would be admitted right now; otherwise the reason. Always 200, as
/// the validator treats anything but `200 {"available": true}` as unavailable anyway.
#[get("/availability")]
pub async fn availability(state: web::Data<AppState>) -> HttpResponse {
    match state.graph.status().await {
        Some(status) => match status.availability() {
            Ok(()) => HttpResponse::Ok().json(json!({ "available": true })),
            Err(reason) => HttpResponse::Ok().json(json!({ "available": false, "reason": reason })),
        },
        None => HttpResponse::Ok().json(json!({ "available": false, "reason": "scheduler not answering" })),
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
