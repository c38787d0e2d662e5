//! The HTTP surface validators talk to. Routes are thin: they parse, check, and hand work to the
//! actor graph; every failure goes through [`error::ApiError`].

pub mod answer;
pub mod body;
pub mod challenge;
pub mod error;
pub mod inference;
pub mod key_exchange;
pub mod state;
pub mod status;

use std::net::SocketAddr;

use actix_web::{web, App, HttpServer};

use error::ApiError;
use state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(status::availability)
        .service(status::health)
        .service(status::metrics)
        .service(key_exchange::public_key)
        .service(key_exchange::key_exchange)
        .service(challenge::challenge)
        .service(inference::inference)
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such endpoint".into()))
        }));
}

/// Binds the server (port 0 picks a free one) and returns it with the address it listens on.
/// Shutdown is graceful: in-flight challenges get up to 55 s to finish.
pub fn bind(
    state: web::Data<AppState>,
    host: &str,
    port: u16,
    workers: usize,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
        .workers(workers)
        .shutdown_timeout(55)
        .disable_signals()
        .bind((host, port))?;
    let addr = *server.addrs().first().ok_or_else(|| std::io::Error::other("no listening address"))?;
    Ok((server.run(), addr))
}
