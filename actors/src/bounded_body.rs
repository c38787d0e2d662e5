//! Bodies of HTTP answers from servers we do not control, read up to a cap.
//!
//! reqwest's `json()` and `bytes()` read whatever the server sends: a backend's `GET /models` or
//! the Challenge API answering with an endless body would grow the node's memory until the kernel
//! ends it (issue 32). Every such answer is read here instead, refused at its cap, whether the
//! server announced its length or not.

use serde_json::Value;

/// Largest answer of a backend's `GET /models` or the Challenge API's list: both are a few KiB.
pub const SMALL_ANSWER_CAP: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is over the {cap}-byte limit")]
    TooLarge { cap: usize },
    #[error("the answer broke off: {0}")]
    Read(String),
    #[error("not JSON: {0}")]
    NotJson(String),
}

/// The whole body, or `TooLarge` as soon as it passes `cap` bytes.
pub async fn read_capped(mut res: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if res.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge { cap });
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| BodyError::Read(e.to_string()))? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body as JSON, read up to `cap` bytes.
pub async fn read_json_capped(res: reqwest::Response, cap: usize) -> Result<Value, BodyError> {
    let body = read_capped(res, cap).await?;
    serde_json::from_slice(&body).map_err(|e| BodyError::NotJson(e.to_string()))
}
