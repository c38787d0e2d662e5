//! `POST /fiber/challenge`: decrypt, answer, encrypt — within the deadline.
//!
//! Order of checks as the Python miner (and so as the validator expects): authorization (403),
//! a ready worker (503), a live key (401 with our public key), a valid token (401), then the
//! challenge itself (422 when malformed). Success is exactly 200 with an octet-stream Fernet token.

use std::time::Instant;

use actix_web::{post, web, HttpRequest, HttpResponse};

use super::answer::{answer, parse_challenge};
use super::body::read_limited;
use super::error::ApiError;
use super::state::AppState;

const HOTKEY_HEADER: &str = "x-fiber-validator-hotkey-ss58";
const UUID_HEADER: &str = "x-fiber-symmetric-key-uuid";
const MINER_HOTKEY_HEADER: &str = "x-fiber-miner-hotkey-ss58";

#[post("/fiber/challenge")]
pub async fn challenge(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let arrival = Instant::now();
    let result = handle(&state, &req, payload, arrival).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ApiError::Forbidden) => "unauthorized",
        Err(ApiError::UnknownKey { .. }) => "unknown_key",
        Err(ApiError::BadToken(_)) => "bad_token",
        Err(ApiError::Unprocessable(_)) | Err(ApiError::BadRequest(_)) | Err(ApiError::TooLarge { .. }) => {
            "bad_request"
        }
        Err(ApiError::Busy { .. }) => "busy",
        Err(ApiError::Unavailable { .. }) => "unavailable",
        Err(_) => "error",
    };
    let m = &state.graph.metrics;
    m.challenges.with_label_values(&[outcome]).inc();
    m.challenge_latency.observe(arrival.elapsed().as_secs_f64());
    match &result {
        Ok(_) => tracing::info!(ms = arrival.elapsed().as_millis() as u64, "challenge answered"),
        Err(e) => tracing::warn!(peer = ?req.peer_addr(), outcome, error = %e, "challenge refused"),
    }
    result
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Result<&'a str, ApiError> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::Unprocessable(format!("missing header {name}")))
}

async fn handle(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    arrival: Instant,
) -> Result<HttpResponse, ApiError> {
    let hotkey = header(req, HOTKEY_HEADER)?;
    let uuid = header(req, UUID_HEADER)?;
    if !state.auth.is_allowed(hotkey) {
        return Err(ApiError::Forbidden);
    }
    if let Some(status) = state.graph.status().await {
        if let Err(reason) = status.availability() {
            return Err(if status.ready_workers == 0 || !status.admission_open {
                ApiError::Unavailable { reason: reason.to_string(), retry_after_secs: Some(5) }
            } else {
                ApiError::Busy { reason: reason.to_string(), retry_after_secs: 1 }
            });
        }
    }
    let body = read_limited(req, payload, state.settings.max_body_bytes).await.inspect_err(|e| {
        if matches!(e, ApiError::TooLarge { .. }) {
            state.graph.metrics.rejected_requests.with_label_values(&["challenge", "too_large"]).inc();
        }
    })?;
    let key = state
        .graph
        .keys
        .lookup(hotkey, uuid)
        .await
        .ok_or_else(|| ApiError::UnknownKey { public_key: state.graph.crypto.public_pem().to_string() })?;
    let plaintext =
        state.graph.crypto.decrypt(key.clone(), body.to_vec(), state.settings.fernet_ttl_secs).await.map_err(|e| {
            ApiError::BadToken(format!("Failed to decrypt challenge payload: {e}. Re-handshake required."))
        })?;
    let request = parse_challenge(&plaintext)?;
    let reply = answer(state, request, arrival).await?;
    let json = serde_json::to_vec(&reply).map_err(|e| ApiError::Internal(format!("reply serialisation: {e}")))?;
    let token = state.graph.crypto.encrypt(key, json).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((UUID_HEADER, uuid.to_string()))
        .insert_header((MINER_HOTKEY_HEADER, state.miner_hotkey.clone()))
        .body(token))
}
