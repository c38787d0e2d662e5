//! A hostile OpenAI-compatible backend, for `loosh-bench attack --attacks hostile-backend` and the tests of
//! issue 32.
//!
//! It is written by hand on a TCP socket, not a real inference server, because it must misbehave
//! on purpose: a challenge whose prompt holds one of the [`Hostility`] triggers gets that
//! misbehaviour; any other gets an honest two-delta answer, so that the miner's next challenge
//! shows whether the node survived. `GET /models` answers honestly, so the worker becomes ready.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The model the backend lists; configure the worker with it.
pub const MODEL: &str = "hostile";
/// What an honest answer says.
pub const HONEST_TEXT: &str = "Hello there.";

/// The misbehaviours, each chosen by a trigger in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// One `tool_calls` delta with `index` 4,000,000,000, then `[DONE]`.
    HugeToolIndex,
    /// Content deltas of 8 KiB each, without end, until the client hangs up.
    EndlessContent,
}

impl Hostility {
    pub const ALL: [Hostility; 2] = [Hostility::HugeToolIndex, Hostility::EndlessContent];

    /// The text that, in a prompt, asks for this misbehaviour.
    pub fn trigger(self) -> &'static str {
        match self {
            Hostility::HugeToolIndex => "HOSTILE-TOOL-INDEX",
            Hostility::EndlessContent => "HOSTILE-ENDLESS-CONTENT",
        }
    }

    /// The name the bench prints.
    pub fn name(self) -> &'static str {
        match self {
            Hostility::HugeToolIndex => "tool-call index 4e9",
            Hostility::EndlessContent => "endless 8 KiB deltas",
        }
    }
}

/// Serves on a free loopback port until the runtime ends; returns the base URL (with `/v1`).
pub async fn start() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    Ok(format!("http://{addr}/v1"))
}

/// One request per connection (the answers say `connection: close`).
async fn serve(mut stream: TcpStream) {
    let Some((head, body)) = read_request(&mut stream).await else { return };
    if head.starts_with("GET ") {
        let json = format!(r#"{{"object":"list","data":[{{"id":"{MODEL}","object":"model"}}]}}"#);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
            json.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        return;
    }
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body);
    let hostility = Hostility::ALL.into_iter().find(|h| body.contains(h.trigger()));
    match hostility {
        Some(Hostility::HugeToolIndex) => {
            let delta = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":4000000000,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#;
            let _ = stream.write_all(&event(delta)).await;
            let _ = stream.write_all(&event("[DONE]")).await;
        }
        Some(Hostility::EndlessContent) => {
            let delta = format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"{}"}}}}]}}"#, "x".repeat(8192));
            let block = event(&delta);
            // Until the client hangs up: a miner that keeps reading keeps this loop going.
            while stream.write_all(&block).await.is_ok() {}
            return;
        }
        None => {
            let (first, rest) = HONEST_TEXT.split_at(5);
            for delta in [
                format!(r#"{{"choices":[{{"index":0,"delta":{{"role":"assistant","content":"{first}"}}}}]}}"#),
                format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"{rest}"}},"finish_reason":"stop"}}]}}"#),
            ] {
                if stream.write_all(&event(&delta)).await.is_err() {
                    return;
                }
            }
            let _ = stream.write_all(&event("[DONE]")).await;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
}

/// `data: ...` and its blank line, as one HTTP chunk.
fn event(data: &str) -> Vec<u8> {
    let line = format!("data: {data}\n\n");
    [format!("{:x}\r\n", line.len()).into_bytes(), line.into_bytes(), b"\r\n".to_vec()].concat()
}

/// The request head and its body (reqwest sends `content-length`).
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    let body_start = loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if seen.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&seen[..body_start]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0);
    while seen.len() < body_start + length.min(16 * 1024 * 1024) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some((head, seen[body_start..].to_vec()))
}
