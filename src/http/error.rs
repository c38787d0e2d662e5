//! Every way a request can fail, mapped to its HTTP status and JSON body in exactly one place.
//!
//! Statuses follow what the validator does with them (PROTOCOL.md): 401 and 400 make it drop its key
//! and re-handshake, so a malformed challenge gets 422, never 400, and an internal timeout gets 503,
//! never 401. Every 503 and 429 carries `Retry-After`.
//!
//! A challenge that ran but has no text gets 504 (no token by the deadline) or 502 (the model
//! ended with nothing), never an empty 200: the validator scores every 200, an empty one at
//! `(1 - t/Σt)·θ` with θ near 0 (it fails the quality filter, or is its lone survivor), and folds
//! it into its moving average, while any 5xx makes its client give up on
//! this challenge for this miner, which adds no sample. 504 and 502 say which side failed: the
//! backend behind the miner, not the miner's admission (503). A backend that misbehaves (a tool
//! call numbered in the billions, endless text) is a 502 too.
//!
//! A `tool_choice` that cannot be honoured (an unknown function, a call forced with no tools, a
//! malformed value) is a malformed challenge: 422.
//!
//! A body never carries the miner's insides: a backend's URL, a model path, an engine's own error
//! text are for the operator, in the (rate-limited) log line of the refusal, not for whoever sent
//! the request. Failures on the miner's side get a fixed text. Bodies stay `{"detail": ...}`, as
//! PROTOCOL.md pins them (the Python miner's), with `public_key` and `requires_handshake` on a 401.
//!
//! A challenge over one of the front door's caps (`front_door::limits`) gets 422 naming the cap,
//! or 413 when it is the prompt's size (also when a worker finds, by its byte length alone, that
//! the prompt cannot fit its context).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use loosh_actors::front_door::challenge::{ChallengeError, NoAnswer};
use loosh_actors::front_door::key_exchange::KeyExchangeError;
use loosh_actors::front_door::limits::LimitError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error(transparent)]
    KeyExchange(#[from] KeyExchangeError),
    /// A header or body the route could not read.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is over the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("{detail}")]
    TooMany { detail: String, retry_after_secs: u64 },
    #[error("{0}")]
    NotFound(String),
}

impl ApiError {
    /// What the caller reads: the error itself when it is about the request, a fixed text when
    /// the miner's side failed (its detail, which may name a backend URL, a model path or an
    /// engine error, goes to the log only).
    pub fn public_detail(&self) -> String {
        match self {
            ApiError::Challenge(ChallengeError::Internal(_)) => "internal error; the miner's log has the detail".into(),
            ApiError::Challenge(ChallengeError::BadGateway(_)) => {
                "the backend misbehaved; the miner's log has the detail".into()
            }
            ApiError::KeyExchange(KeyExchangeError::Unavailable(_)) => {
                "the key exchange could not be completed now; retry".into()
            }
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooMany { retry_after_secs, .. }
            | ApiError::Challenge(
                ChallengeError::Busy { retry_after_secs, .. }
                | ChallengeError::Unavailable { retry_after_secs, .. }
                | ChallengeError::RateLimited { retry_after_secs },
            )
            | ApiError::KeyExchange(
                KeyExchangeError::Busy { retry_after_secs }
                | KeyExchangeError::TooManyExchanges { retry_after_secs }
                | KeyExchangeError::RateLimited { retry_after_secs },
            ) => Some(*retry_after_secs),
            ApiError::KeyExchange(KeyExchangeError::Unavailable(_)) => Some(1),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Challenge(e) => match e {
                ChallengeError::Forbidden => StatusCode::FORBIDDEN,
                ChallengeError::UnknownKey { .. } | ChallengeError::BadToken(_) => StatusCode::UNAUTHORIZED,
                ChallengeError::Unprocessable(_) | ChallengeError::ToolChoice(_) => StatusCode::UNPROCESSABLE_ENTITY,
                // A prompt too large for any context is the request's size; every other cap is
                // about its shape.
                ChallengeError::OverLimit(LimitError::PromptTooLarge { .. }) | ChallengeError::TooLarge(_) => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                ChallengeError::OverLimit(_) => StatusCode::UNPROCESSABLE_ENTITY,
                // The backend, not the miner, failed: as for a model that ended with nothing.
                ChallengeError::BadGateway(_) => StatusCode::BAD_GATEWAY,
                ChallengeError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                ChallengeError::Busy { .. } | ChallengeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                ChallengeError::NoAnswer(NoAnswer::NoToken) => StatusCode::GATEWAY_TIMEOUT,
                ChallengeError::NoAnswer(NoAnswer::Empty | NoAnswer::ToolCallsOnly) => StatusCode::BAD_GATEWAY,
                ChallengeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::KeyExchange(e) => match e {
                KeyExchangeError::Malformed(_) => StatusCode::UNPROCESSABLE_ENTITY,
                KeyExchangeError::Forbidden | KeyExchangeError::AddressNotReported => StatusCode::FORBIDDEN,
                KeyExchangeError::UuidTaken => StatusCode::CONFLICT,
                KeyExchangeError::StaleTimestamp(_)
                | KeyExchangeError::BadSignature(_)
                | KeyExchangeError::Replay
                | KeyExchangeError::KeyUnwrap => StatusCode::BAD_REQUEST,
                KeyExchangeError::TooManyExchanges { .. } | KeyExchangeError::RateLimited { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                KeyExchangeError::Busy { .. } | KeyExchangeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        let body = match self {
            ApiError::Challenge(ChallengeError::UnknownKey { public_key }) => json!({
                "detail": self.to_string(),
                "public_key": public_key,
                "requires_handshake": true,
            }),
            _ => json!({ "detail": self.public_detail() }),
        };
        if let Some(secs) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if matches!(self, ApiError::BodyTimeout { .. }) {
            // The rest of a stalled body may never come: do not wait for it to reuse the connection.
            res.insert_header((header::CONNECTION, "close"));
        }
        res.json(body)
    }
}

/// A per-IP rate limit refusal (429 + `Retry-After`).
pub fn rate_limited(retry_after_secs: u64) -> ApiError {
    ApiError::TooMany { detail: format!("rate limit exceeded; retry in {retry_after_secs} s"), retry_after_secs }
}
