//! Bounded request bodies: an oversized body is refused with 413 before it is buffered.

use actix_web::{web, HttpRequest};

use super::error::ApiError;

/// Reads the whole body, refusing it once it passes `limit` bytes (by header or by count).
pub async fn read_limited(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ApiError::BadRequest(format!("could not read the request body: {e}"))),
        Err(_) => Err(ApiError::TooLarge { limit }),
    }
}
