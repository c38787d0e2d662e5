//! `POST /fiber/challenge`: read the two headers and the body, hand them to the front door
//! ([`loosh_actors::front_door::FrontDoor::answer_challenge`]), return its token as an octet stream.

use std::time::Instant;

use actix_web::{post, web, HttpRequest, HttpResponse};
use tracing::Instrument;

use super::body::read_limited;
use super::error::{rate_limited, ApiError};
use super::state::AppState;
use loosh_actors::front_door::rate_limit::Route;

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
    // Every line logged for this challenge (the "challenge answered" line with worker, tokens and
    // milliseconds among them) names the validator: the first 8 characters of its hotkey, enough
    // to tell validators apart and to grep for.
    let validator: String = req
        .headers()
        .get(HOTKEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(String::new, |h| h.trim().chars().take(8).collect());
    let span = tracing::info_span!("challenge", validator = %validator);
    let result = handle(&state, &req, payload, arrival).instrument(span).await;
    if let Err(e) = &result {
        log_refusal(&state, &req, e);
    }
    // Per validator only for listed hotkeys (a bounded set). A refusal is labelled with the hotkey
    // the caller claimed; an `ok` proves it (the reply needed the validator's key).
    if let Some(hotkey) = req.headers().get(HOTKEY_HEADER).and_then(|v| v.to_str().ok()).map(str::trim) {
        if state.door.auth.is_listed(hotkey) {
            let outcome = result.as_ref().map_or_else(outcome_of, |_| "ok");
            state.door.metrics().validators.challenge(hotkey, outcome, arrival.elapsed().as_secs_f64());
        }
    }
    result
}

/// The `outcome` label of a refused challenge (as `loosh_challenges_total` counts it).
fn outcome_of(e: &ApiError) -> &'static str {
    match e {
        ApiError::Challenge(c) => c.outcome(),
        ApiError::TooLarge { .. } => "too_large",
        ApiError::BodyTimeout { .. } => "body_timeout",
        ApiError::TooMany { .. } => "rate_limited",
        _ => "bad_request",
    }
}

fn log_refusal(state: &AppState, req: &HttpRequest, e: &ApiError) {
    let outcome = outcome_of(e);
    if let Some(suppressed) = state.refusals.admit(outcome) {
        tracing::warn!(peer = ?super::client_ip(state, req), outcome, suppressed, error = %e, "challenge refused");
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Result<&'a str, ApiError> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .ok_or_else(|| ApiError::Unprocessable(format!("missing or oversized header {name}")))
}

async fn handle(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    arrival: Instant,
) -> Result<HttpResponse, ApiError> {
    let g = &state.door;
    let refused = |e: ApiError| {
        let m = g.metrics();
        match &e {
            ApiError::Challenge(c) => m.challenges.with_label_values(&[c.outcome()]).inc(),
            ApiError::TooLarge { .. } | ApiError::BodyTimeout { .. } => {
                let reason = if matches!(e, ApiError::TooLarge { .. }) { "too_large" } else { "body_timeout" };
                m.rejected_requests.with_label_values(&["challenge", reason]).inc();
                m.challenges.with_label_values(&["bad_request"]).inc();
            }
            ApiError::TooMany { .. } => m.challenges.with_label_values(&["rate_limited"]).inc(),
            _ => m.challenges.with_label_values(&["bad_request"]).inc(),
        }
        e
    };
    let hotkey = header(req, HOTKEY_HEADER).map_err(refused)?;
    let uuid = header(req, UUID_HEADER).map_err(refused)?;
    let peer = super::client_ip(state, req);
    g.check_ip_rate(Route::Challenge, peer, g.auth.is_allowed(hotkey)).map_err(|secs| refused(rate_limited(secs)))?;
    g.check_caller(hotkey).map_err(|e| refused(e.into()))?;
    // An unknown key is refused before the body is read: it gets its 401 (with our public key)
    // without the server reading up to MAX_BODY_BYTES for nothing.
    if g.keys().lookup(hotkey, uuid).is_none() {
        let public_key = g.rsa.public_pem().to_string();
        return Err(refused(loosh_actors::front_door::challenge::ChallengeError::UnknownKey { public_key }.into()));
    }
    let s = &state.settings;
    let body = read_limited(req, payload, s.max_body_bytes, s.body_read_timeout).await.map_err(refused)?;
    tracing::debug!(bytes = body.len(), read_ms = arrival.elapsed().as_millis() as u64, "challenge body read");
    let token = g.answer_challenge(hotkey, uuid, &body, arrival).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((UUID_HEADER, uuid.to_string()))
        .insert_header((MINER_HOTKEY_HEADER, state.miner_hotkey.clone()))
        .body(token))
}
