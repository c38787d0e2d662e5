//! `GET /fiber/public-key` and `POST /fiber/key-exchange`: read the body (at most
//! `max_key_exchange_bytes`, within the body deadline) and hand it to the front door
//! ([`loosh_actors::front_door::FrontDoor::exchange_key`]), which runs every check.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde_json::json;

use super::body::read_limited;
use super::caller::names_a_validator;
use super::error::{rate_limited, ApiError};
use super::state::AppState;
use loosh_actors::front_door::rate_limit::Route;

#[get("/fiber/public-key")]
pub async fn public_key(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let g = &state.door;
    g.check_ip_rate(Route::PublicKey, super::client_ip(&state, &req), names_a_validator(&state, &req))
        .map_err(rate_limited)?;
    Ok(HttpResponse::Ok().json(json!({ "public_key": g.rsa.public_pem() })))
}

#[post("/fiber/key-exchange")]
pub async fn key_exchange(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let s = &state.settings;
    let result = match read_limited(&req, payload, s.max_key_exchange_bytes, s.body_read_timeout).await {
        Ok(body) => state.door.exchange_key(&body, super::client_ip(&state, &req)).await.map_err(ApiError::from),
        Err(e) => {
            let reason = match &e {
                ApiError::TooLarge { .. } => "too_large",
                ApiError::BodyTimeout { .. } => "body_timeout",
                _ => "malformed",
            };
            state.door.metrics().rejected_requests.with_label_values(&["key-exchange", reason]).inc();
            state.door.metrics().handshakes.with_label_values(&["malformed"]).inc();
            Err(e)
        }
    };
    match &result {
        Ok(hotkey) => {
            tracing::info!(validator = %hotkey, "symmetric key exchanged");
            if state.door.auth.is_listed(hotkey) {
                state.door.metrics().validators.key_exchanged(hotkey);
            }
        }
        Err(e) => {
            let outcome = match e {
                ApiError::KeyExchange(k) => k.outcome(),
                _ => "malformed",
            };
            if let Some(suppressed) = state.refusals.admit(outcome) {
                tracing::warn!(peer = ?super::client_ip(&state, &req), outcome, suppressed, error = %e, "key exchange refused");
            }
        }
    }
    result.map(|_| HttpResponse::Ok().json(json!({ "success": true, "message": "Symmetric key exchanged" })))
}
