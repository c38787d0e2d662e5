//! Who a caller says it is: the `validator-hotkey` header, unverified. It only selects the larger
//! per-address budget, and names whom an `/availability` answer is counted for; the signed key
//! exchange is what proves an identity.

use actix_web::HttpRequest;

use super::state::AppState;

/// Whether the caller's `validator-hotkey` header names an allowed validator (unverified: it only
/// selects the larger per-IP budget).
pub fn names_a_validator(state: &AppState, req: &HttpRequest) -> bool {
    claimed_hotkey(req).is_some_and(|h| state.door.auth.is_allowed(h))
}

/// The hotkey a caller's `validator-hotkey` header claims (unverified), if it is a plausible one.
pub fn claimed_hotkey(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("validator-hotkey")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty() && h.len() <= 64)
}
