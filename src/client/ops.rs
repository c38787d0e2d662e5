//! The operator's side of `/health` and `/metrics`: where the running miner serves them (from the
//! same configuration it reads) and a plain blocking GET, for `loosh-miner health` (Docker's
//! `HEALTHCHECK`, which has no curl in the runtime image) and `loosh-miner status`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::Config;

/// Why the miner's operator address could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("METRICS_PORT=off and METRICS_ON_PUBLIC_PORT=false: /health and /metrics are served nowhere")]
    NotServed,
    #[error("{addr}: {source} (is the miner running with this configuration?)")]
    Connect { addr: String, source: std::io::Error },
    #[error("{addr}{path}: {detail}")]
    Response { addr: String, path: String, detail: String },
}

/// Where `/health` and `/metrics` answer: `METRICS_HOST:METRICS_PORT`, or `API_PORT` when they
/// are only on the public port. A wildcard host is asked on loopback.
pub fn ops_address(cfg: &Config) -> Result<String, OpsError> {
    let (host, port) = match &cfg.http.ops_listen {
        Some((host, port)) if *port != 0 => (host.as_str(), *port),
        _ if cfg.http.ops_on_public_port => (cfg.api_host.as_str(), cfg.api_port),
        _ => return Err(OpsError::NotServed),
    };
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "[::1]",
        h => h,
    };
    Ok(format!("{host}:{port}"))
}

/// `GET path` on `addr` over HTTP/1.1; the body of a 200, else an error with the status.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<String, OpsError> {
    let fail = |detail: String| OpsError::Response { addr: addr.into(), path: path.into(), detail };
    let target: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|source| OpsError::Connect { addr: addr.into(), source })?
        .next()
        .ok_or_else(|| fail("no address".into()))?;
    let mut s = TcpStream::connect_timeout(&target, timeout)
        .map_err(|source| OpsError::Connect { addr: addr.into(), source })?;
    s.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| fail(e.to_string()))?;
    let mut raw = Vec::new();
    // Bounded: a health answer is small; 16 MiB covers /metrics with every label set.
    s.take(16 << 20).read_to_end(&mut raw).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| fail("not an HTTP answer".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(fail(format!("HTTP {status}")));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// A chunked body, joined (actix streams large bodies chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    #[test]
    fn the_address_follows_the_miners_own_settings() {
        let cfg = |pairs: &[(&str, &str)]| Config::from_source(&Source::from_pairs(pairs.iter().copied())).unwrap();
        assert_eq!(ops_address(&cfg(&[])).unwrap(), "127.0.0.1:8478");
        assert_eq!(
            ops_address(&cfg(&[("METRICS_HOST", "0.0.0.0"), ("METRICS_PORT", "9200")])).unwrap(),
            "127.0.0.1:9200"
        );
        let public = cfg(&[("METRICS_PORT", "off"), ("METRICS_ON_PUBLIC_PORT", "true"), ("API_PORT", "8091")]);
        assert_eq!(ops_address(&public).unwrap(), "127.0.0.1:8091");
        assert!(matches!(ops_address(&cfg(&[("METRICS_PORT", "off")])), Err(OpsError::NotServed)));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
