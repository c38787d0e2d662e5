//! Legacy `POST /inference` (plain JSON). Off by default: in the Python miner it is an
//! unauthenticated GPU proxy. When enabled it still requires a whitelisted `validator-hotkey`.

use std::time::Instant;

use actix_web::{post, web, HttpRequest, HttpResponse};

use super::body::read_limited;
use super::error::ApiError;
use super::state::AppState;

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
    state.graph.check_caller(hotkey)?;
    let s = &state.settings;
    let body = read_limited(&req, payload, s.max_body_bytes, s.body_read_timeout).await?;
    let reply = state.graph.answer_plain(&body, arrival).await?;
    Ok(HttpResponse::Ok().json(reply))
}
