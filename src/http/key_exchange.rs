//! `GET /fiber/public-key` and `POST /fiber/key-exchange`: a validator hands us its Fernet key.
//!
//! Checks run cheapest first: authorization, timestamp age, nonce replay, sr25519 signature, and
//! only then the RSA private-key operation. The nonce is recorded atomically with the key, so two
//! racing copies of one exchange store it once.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::messages::{unix_time_f64, KeyExchangeRequest};
use loosh_actors::protocol::signature::verify_sr25519;
use loosh_actors::session::key_session::StoreError;
use loosh_actors::session::registry::KeyStoreError;
use serde_json::json;

use super::body::read_limited;
use super::error::ApiError;
use super::state::AppState;

#[get("/fiber/public-key")]
pub async fn public_key(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "public_key": state.graph.crypto.public_pem() }))
}

#[post("/fiber/key-exchange")]
pub async fn key_exchange(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let result = exchange(&state, &req, payload).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err((outcome, _)) => *outcome,
    };
    state.graph.metrics.handshakes.with_label_values(&[outcome]).inc();
    match &result {
        Ok(hotkey) => tracing::info!(validator = %hotkey, "symmetric key exchanged"),
        Err((_, e)) => tracing::warn!(peer = ?req.peer_addr(), outcome, error = %e, "key exchange refused"),
    }
    let result = result.map_err(|(_, e)| e);
    result.map(|_| HttpResponse::Ok().json(json!({ "success": true, "message": "Symmetric key exchanged" })))
}

/// Why an exchange was refused: the metric label, and the error the validator gets.
type Refusal = (&'static str, ApiError);

/// Returns the validator's hotkey on success.
async fn exchange(state: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<String, Refusal> {
    let limit = state.settings.max_body_bytes;
    let body = read_limited(req, payload, limit).await.map_err(|e| ("malformed", e)).inspect_err(|(_, e)| {
        if matches!(e, ApiError::TooLarge { .. }) {
            state.graph.metrics.rejected_requests.with_label_values(&["key-exchange", "too_large"]).inc();
        }
    })?;
    let ke: KeyExchangeRequest = serde_json::from_slice(&body).map_err(|e| {
        ("malformed", ApiError::Unprocessable(format!("key-exchange body is not the expected JSON: {e}")))
    })?;
    let hotkey = ke.validator_hotkey_ss58.trim().to_string();

    if !state.auth.is_allowed(&hotkey) {
        return Err(("unauthorized", ApiError::Forbidden));
    }
    if ke.symmetric_key_uuid.is_empty()
        || ke.symmetric_key_uuid.len() > 128
        || ke.nonce.is_empty()
        || ke.nonce.len() > 256
    {
        return Err((
            "malformed",
            ApiError::Unprocessable("symmetric_key_uuid and nonce must be non-empty and short".into()),
        ));
    }

    let ts = ke.timestamp_secs().ok_or_else(|| {
        ("stale_timestamp", ApiError::BadRequest("timestamp must be a number of unix seconds".into()))
    })?;
    let now = unix_time_f64();
    let s = &state.settings;
    if now - ts > s.max_timestamp_age.as_secs_f64() {
        return Err((
            "stale_timestamp",
            ApiError::BadRequest(format!(
                "timestamp is {:.0} s old; key exchanges older than {} s are refused (check the validator's clock)",
                now - ts,
                s.max_timestamp_age.as_secs()
            )),
        ));
    }
    if ts - now > s.max_timestamp_ahead.as_secs_f64() {
        return Err((
            "stale_timestamp",
            ApiError::BadRequest(format!(
                "timestamp is {:.0} s in the future; more than {} s ahead is refused (check the clocks)",
                ts - now,
                s.max_timestamp_ahead.as_secs()
            )),
        ));
    }

    if state.graph.keys.nonce_seen(&hotkey, &ke.nonce).await {
        return Err(("replay", ApiError::BadRequest("nonce already used".into())));
    }

    let verified =
        ke.candidate_signed_messages().iter().any(|message| verify_sr25519(&hotkey, message, &ke.signature).is_ok());
    if !verified {
        let why = match verify_sr25519(&hotkey, "", &ke.signature) {
            Err(e @ loosh_actors::protocol::signature::SignatureError::BadSignatureFormat)
            | Err(e @ loosh_actors::protocol::signature::SignatureError::BadAddress) => e.to_string(),
            _ => "signature does not verify for this hotkey".to_string(),
        };
        return Err(("bad_signature", ApiError::BadRequest(format!("invalid signature: {why}"))));
    }

    let key_text = state
        .graph
        .crypto
        .unwrap_key(ke.encrypted_symmetric_key.clone())
        .await
        .map_err(|_| ("bad_key", ApiError::KeyExchangeFailed))?;
    let key = FernetKey::from_key_text(&key_text).map_err(|_| ("bad_key", ApiError::KeyExchangeFailed))?;

    match state.graph.keys.store(&hotkey, &ke.symmetric_key_uuid, &ke.nonce, key).await {
        Ok(()) => Ok(hotkey),
        Err(KeyStoreError::Refused(StoreError::ReplayedNonce)) => {
            Err(("replay", ApiError::BadRequest("nonce already used".into())))
        }
        Err(KeyStoreError::Refused(StoreError::TooManyExchanges)) => Err((
            "busy",
            ApiError::TooMany {
                detail: "too many key exchanges from this validator; retry later".into(),
                retry_after_secs: state.settings.max_timestamp_age.as_secs().max(1),
            },
        )),
        Err(KeyStoreError::Unavailable(e)) => {
            Err(("unavailable", ApiError::Unavailable { reason: e, retry_after_secs: Some(1) }))
        }
    }
}
