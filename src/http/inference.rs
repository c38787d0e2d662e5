//! Legacy `POST /inference` (plain JSON). Off by default: in the Python miner it is an
//! unauthenticated GPU proxy. When enabled it still requires a whitelisted `validator-hotkey`
//! header — a claim anyone can write, so it is limited as a stranger's traffic is: the per-address
//! challenge budget and an in-flight share of that (claimed validator, address).

use std::time::Instant;

use actix_web::{post, web, HttpRequest, HttpResponse};

use super::body::read_limited;
use super::error::{rate_limited, ApiError};
use super::state::AppState;
use loosh_actors::front_door::rate_limit::Route;

#[post("/inference")]
pub async fn inference(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let arrival = Instant::now();
    if !state.settings.inference_enabled {
        return Err(ApiError::NotFound("/inference is disabled (ENABLE_INFERENCE_ENDPOINT=false)".into()));
    }
    let hotkey = req.headers().get("validator-hotkey").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if hotkey.is_empty() {
        return Err(loosh_actors::front_door::challenge::ChallengeError::Forbidden.into());
    }
    // Unauthenticated (the header is a claim), so it is held to the challenge route's per-address
    // budget and to an in-flight share of that (claimed validator, address).
    let ip = super::client_ip(&state, &req);
    let allowed = state.door.auth.is_allowed(hotkey);
    state.door.check_ip_rate(Route::Challenge, ip, allowed).map_err(rate_limited)?;
    state.door.check_caller(hotkey)?;
    let s = &state.settings;
    let body = read_limited(&req, payload, s.max_body_bytes, s.body_read_timeout).await?;
    let reply = state.door.answer_plain_as(hotkey, ip, &body, arrival).await?;
    Ok(HttpResponse::Ok().json(reply))
}
