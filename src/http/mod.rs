//! The HTTP surface validators talk to. Routes are thin: they read headers and bodies (bounded in
//! size and time) and call the engine's front door; every failure goes through [`error::ApiError`].

pub mod api_docs;
pub mod body;
pub mod caller;
pub mod challenge;
pub mod connections;
pub mod error;
pub mod inference;
pub mod key_exchange;
pub mod ready_clock;
pub mod refusals;
pub mod state;
pub mod status;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

use std::net::SocketAddr;

use actix_web::{web, App, HttpServer};

use error::ApiError;
use state::AppState;

/// The client's address: the TCP peer, or — only when the peer is one of `TRUSTED_PROXIES` — the
/// nearest address in `X-Forwarded-For` that is not itself a trusted proxy. Every per-address
/// limit, share and proof uses this, so behind a proxy they apply to the real clients, and
/// without one a forged header changes nothing.
pub fn client_ip(state: &AppState, req: &actix_web::HttpRequest) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    let trusted = &state.settings.trusted_proxies;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let mut forwarded: Vec<std::net::IpAddr> = Vec::new();
    for value in req.headers().get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else { return Some(peer) };
        for item in text.split(',') {
            match item.trim().parse() {
                Ok(ip) => forwarded.push(ip),
                // An unreadable hop: nothing left of it can be believed; the proxy is the client.
                Err(_) => return Some(peer),
            }
        }
    }
    Some(forwarded.into_iter().rev().find(|ip| !trusted.contains(ip)).unwrap_or(peer))
}

fn not_found(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::to(|state: web::Data<AppState>, req: actix_web::HttpRequest| async move {
        let peer = client_ip(&state, &req);
        let named = caller::names_a_validator(&state, &req);
        state
            .door
            .check_ip_rate(loosh_actors::front_door::rate_limit::Route::Other, peer, named)
            .map_err(error::rate_limited)?;
        Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such endpoint".into()))
    }));
}

/// The operator's routes, `/health` and `/metrics`: on their own (loopback by default) address,
/// because they tell a competitor our load, our restarts and our hotkey.
pub fn ops_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(status::health).service(status::metrics);
    #[cfg(feature = "test-hooks")]
    cfg.service(test_hooks::crash);
}

/// The validators' routes (plus the operator's when `METRICS_ON_PUBLIC_PORT` asks for them, and
/// the API documentation when `ENABLE_API_DOCS` does).
pub fn routes(cfg: &mut web::ServiceConfig, with_ops: bool, with_docs: bool) {
    if with_ops {
        ops_routes(cfg);
    }
    if with_docs {
        cfg.service(api_docs::openapi).service(api_docs::docs).service(api_docs::redoc);
    }
    cfg.service(status::availability)
        .service(key_exchange::public_key)
        .service(key_exchange::key_exchange)
        .service(challenge::challenge)
        .service(inference::inference);
    not_found(cfg);
}

/// Binds the server (port 0 picks a free one) and returns it with the address it listens on.
/// Shutdown is graceful: in-flight challenges get up to 55 s to finish. Connections are bounded in
/// number, in the time to send headers, and in idle keep-alive; bodies are bounded in the routes.
pub fn bind(
    state: web::Data<AppState>,
    host: &str,
    port: u16,
    workers: usize,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let s = state.settings.clone();
    let workers = workers.max(1);
    let (with_ops, with_docs) = (s.ops_on_public_port, s.api_docs);
    let limits = connections::ConnLimits {
        total: s.max_connections,
        per_address: s.max_connections_per_address,
        idle_head_limit: s.keep_alive + s.header_read_timeout,
    };
    let tracker = connections::ConnTracker::new(limits, s.header_read_timeout, state.door.clone());
    tracker.spawn_watchdog();
    let server = HttpServer::new(move || {
        App::new()
            .wrap_fn(connections::mark_requests)
            .app_data(state.clone())
            .configure(|c| routes(c, with_ops, with_docs))
    })
    .on_connect(move |conn, ext| {
        if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            if let Some(guard) = tracker.admit(stream) {
                ext.insert(guard);
            }
        }
    })
    .workers(workers)
    // actix counts per worker thread. Its cap is a backstop above ours
    // (`connections::ConnTracker`, which shuts what is over at once): past it, accepts
    // would wait in the backlog for everyone, validators included.
    .max_connections((2 * s.max_connections).div_ceil(workers).max(1))
    .client_request_timeout(s.header_read_timeout)
    .client_disconnect_timeout(std::time::Duration::from_secs(1))
    .keep_alive(s.keep_alive)
    // A reply is one write; Nagle would hold its last segment for the client's delayed ACK.
    .tcp_nodelay(true)
    .shutdown_timeout(55)
    .disable_signals()
    .bind((host, port))?;
    let addr = *server.addrs().first().ok_or_else(|| std::io::Error::other("no listening address"))?;
    Ok((server.run(), addr))
}

/// Binds the operator's server (`/health`, `/metrics`) on its own address: one worker, few
/// connections, nothing a validator needs.
pub fn bind_ops(
    state: web::Data<AppState>,
    host: &str,
    port: u16,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).configure(|c| {
            ops_routes(c);
            not_found(c);
        })
    })
    .workers(1)
    .max_connections(64)
    .shutdown_timeout(1)
    .disable_signals()
    .bind((host, port))?;
    let addr = *server.addrs().first().ok_or_else(|| std::io::Error::other("no listening address"))?;
    Ok((server.run(), addr))
}
