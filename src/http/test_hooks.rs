//! Test hooks on the operator's address, compiled only with the `test-hooks` feature (the tests
//! and `bench`; never the production build): they crash a core actor of the running node, so
//! that its restart, and the node's exit once restarts cannot help, are exercised through the
//! real binary as an operator would meet them.

use actix_web::{post, web, HttpResponse};
use loosh_actors::settings::RestartPolicy;

use super::error::ApiError;
use super::state::AppState;

/// `LOOSH_TEST_MAX_RESTARTS`: the node's restart policy allows this many restarts within a
/// minute, 100 ms apart, instead of the default's ten in ten minutes (so that a test reaches the
/// limit in moments). Read only in a `test-hooks` build.
const MAX_RESTARTS_VAR: &str = "LOOSH_TEST_MAX_RESTARTS";

/// The restart policy as a test asked for it, or `None` to keep the default.
pub fn restart_policy() -> Option<RestartPolicy> {
    let max_restarts = std::env::var(MAX_RESTARTS_VAR).ok()?.parse().ok()?;
    Some(RestartPolicy {
        max_restarts,
        within: std::time::Duration::from_secs(60),
        backoff_initial: std::time::Duration::from_millis(100),
        backoff_max: std::time::Duration::from_millis(100),
    })
}

/// `POST /test/crash/{actor}`: makes `scheduler`, `key-registry` or `worker-supervisor` panic.
#[post("/test/crash/{actor}")]
pub async fn crash(state: web::Data<AppState>, actor: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let Some(sent) = state.door.crash_for_test(&actor) else {
        return Err(ApiError::NotFound(format!("no test hook for {actor:?}")));
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({ "sent": sent })))
}
