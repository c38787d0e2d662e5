//! `/openapi.json`, `/docs` and `/redoc`, when `ENABLE_API_DOCS=true` (off by default: a miner
//! owes the internet nothing beyond the protocol). The document is written by hand beside the
//! routes it describes; the two pages are small self-contained HTML files that render it in the
//! browser, so nothing is fetched from a CDN and they work on an offline host.

use actix_web::{get, HttpResponse};

const OPENAPI: &str = include_str!("api_docs/openapi.json");
const DOCS: &str = include_str!("api_docs/docs.html");
const REDOC: &str = include_str!("api_docs/redoc.html");

/// The document with this build's version.
pub fn openapi_json() -> String {
    OPENAPI.replacen("\"version\": \"VERSION\"", &format!("\"version\": \"{}\"", env!("CARGO_PKG_VERSION")), 1)
}

#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(openapi_json())
}

#[get("/docs")]
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(DOCS)
}

#[get("/redoc")]
pub async fn redoc() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(REDOC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_with_this_version_and_the_pages_fetch_nothing_from_elsewhere() {
        let v: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        assert_eq!(v["info"]["version"], env!("CARGO_PKG_VERSION"));
        for page in [DOCS, REDOC] {
            assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "{page}");
            assert!(page.contains("fetch('/openapi.json')"));
        }
    }
}
