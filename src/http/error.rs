//! Every way a request can fail, mapped to its HTTP status and JSON body in exactly one place.
//!
//! Statuses follow what the validator does with them (PROTOCOL.md): 401 and 400 make it drop its key
//! and re-handshake, so a malformed challenge gets 422, never 400.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Validator hotkey not recognized.")]
    Forbidden,
    #[error("{0}")]
    BadRequest(String),
    #[error("Failed to exchange symmetric key")]
    KeyExchangeFailed,
    #[error("Symmetric key not found or expired. Re-handshake required.")]
    UnknownKey { public_key: String },
    #[error("{0}")]
    BadToken(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("request body is over the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("{detail}")]
    TooMany { detail: String, retry_after_secs: u64 },
    #[error("{reason}")]
    Unavailable { reason: String, retry_after_secs: Option<u64> },
    /// Every queue is full: 503 at once, with a hint of when a slot frees up.
    #[error("{reason}")]
    Busy { reason: String, retry_after_secs: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) | ApiError::KeyExchangeFailed => StatusCode::BAD_REQUEST,
            ApiError::UnknownKey { .. } | ApiError::BadToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        let body = match self {
            ApiError::UnknownKey { public_key } => json!({
                "detail": self.to_string(),
                "public_key": public_key,
                "requires_handshake": true,
            }),
            _ => json!({ "detail": self.to_string() }),
        };
        match self {
            ApiError::TooMany { retry_after_secs, .. }
            | ApiError::Unavailable { retry_after_secs: Some(retry_after_secs), .. } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            _ => {}
        }
        res.json(body)
    }
}
