//! Bounded request bodies: refused with 413 past a byte cap and with 408 past a time limit.
//!
//! actix bounds the time to read headers (`client_request_timeout`) but not the body: a peer that
//! announces 2 MiB and sends a byte every few seconds would hold its connection and a buffer forever.

use std::time::Duration;

use actix_web::{web, HttpRequest};

use super::error::ApiError;

/// Reads the whole body within `within`, refusing it once it passes `limit` bytes (by header or by
/// count).
pub async fn read_limited(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    within: Duration,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    match actix_web::rt::time::timeout(within, payload.to_bytes_limited(limit)).await {
        Ok(Ok(Ok(bytes))) => Ok(bytes),
        Ok(Ok(Err(e))) => Err(ApiError::BadRequest(format!("could not read the request body: {e}"))),
        Ok(Err(_)) => Err(ApiError::TooLarge { limit }),
        Err(_) => Err(ApiError::BodyTimeout { secs: within.as_secs() }),
    }
}
