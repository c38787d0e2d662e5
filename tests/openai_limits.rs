//! How the OpenAI-compatible worker reads a misbehaving server: an error body that never ends,
//! one that stalls, an SSE line that never ends and a `GET /models` answer that never ends are
//! each cut by a size cap or the request's deadline instead of holding the worker (or its memory)
//! for as long as the server likes.
//!
//! The server here is a stand-in written on a raw TCP socket, not a real inference server: what is
//! under test is our reading of the bytes, and no real server misbehaves on demand. The real
//! server's behaviour is covered in `openai_worker.rs`.

use std::time::{Duration, Instant};

use loosh_actors::inference::openai::{OpenAiClient, OpenAiSpec};
use loosh_actors::inference::request::{BackendError, GenerationRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the stand-in does after reading a request.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// 500, then an error body streamed without end.
    EndlessErrorBody,
    /// 500, a few bytes of error body, then nothing (the connection stays open).
    StalledErrorBody,
    /// 200 text/event-stream, then one line without end.
    EndlessSseLine,
    /// 200 application/json (as `GET /models` answers), then a body without end.
    EndlessJson,
}

/// Serves `what` on every connection; returns the base URL.
async fn stand_in(what: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(serve(stream, what));
        }
    });
    format!("http://{addr}/v1")
}

async fn serve(mut stream: TcpStream, what: Misbehaviour) {
    // Read the request head and its body (reqwest sends Content-Length).
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let body_start = loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&seen[..body_start]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while seen.len() < body_start + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let chunk = |data: &[u8]| [format!("{:x}\r\n", data.len()).into_bytes(), data.to_vec(), b"\r\n".to_vec()].concat();
    match what {
        Misbehaviour::EndlessErrorBody => {
            let head =
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = chunk(&[b'x'; 8192]);
            while stream.write_all(&block).await.is_ok() {}
        }
        Misbehaviour::StalledErrorBody => {
            let head =
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = stream.write_all(&[head.as_bytes(), &chunk(b"overloaded, try later")].concat()).await;
            // Then nothing, until the client hangs up.
            let _ = stream.read(&mut buf).await;
        }
        Misbehaviour::EndlessSseLine => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = chunk(&[b'a'; 8192]);
            let _ = stream.write_all(&chunk(b"data: ")).await;
            while stream.write_all(&block).await.is_ok() {}
        }
        Misbehaviour::EndlessJson => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let _ = stream.write_all(&chunk(b"{\"data\": [\"")).await;
            let block = chunk(&[b'a'; 8192]);
            while stream.write_all(&block).await.is_ok() {}
        }
    }
}

fn client(base_url: String) -> OpenAiClient {
    OpenAiClient::new(OpenAiSpec {
        base_url,
        model: "stand-in".into(),
        n_parallel: 1,
        api_key: None,
        request_timeout: Duration::from_secs(3600),
        health_every: Duration::from_secs(3600),
        max_model_len: None,
    })
    .unwrap()
}

/// Runs one chat against the stand-in with the given deadline; a guard turns a hang (the cap or
/// deadline not working) into a failure instead of a stuck test run.
async fn chat(what: Misbehaviour, deadline: Duration) -> Result<(), BackendError> {
    let client = client(stand_in(what).await);
    let request = GenerationRequest::one_turn("hello", 8, Instant::now() + deadline);
    let result = tokio::time::timeout(Duration::from_secs(300), client.chat(&request))
        .await
        .expect("the worker stopped reading on its own (cap or deadline), not held by the server");
    result.map(|_| ())
}

#[tokio::test]
async fn an_endless_error_body_is_read_only_up_to_its_cap() {
    // The deadline is an hour away: only the cap can end this read.
    match chat(Misbehaviour::EndlessErrorBody, Duration::from_secs(3600)).await {
        Err(BackendError::Inference(message)) => {
            assert!(message.contains("answered 500"), "{message}");
            assert!(message.contains("xxxx"), "the start of the body is kept for the message: {message}");
            assert!(message.len() < 1024, "the message keeps only the start: {} bytes", message.len());
        }
        other => panic!("expected an Inference error naming the 500, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stalled_error_body_is_read_until_the_deadline_and_keeps_what_arrived() {
    match chat(Misbehaviour::StalledErrorBody, Duration::from_secs(1)).await {
        Err(BackendError::Inference(message)) => {
            assert!(message.contains("answered 500"), "{message}");
            assert!(message.contains("overloaded, try later"), "{message}");
        }
        other => panic!("expected an Inference error naming the 500, got {other:?}"),
    }
}

#[tokio::test]
async fn an_sse_line_without_end_is_refused_at_its_cap() {
    // The deadline is an hour away: only the line cap can end this read.
    match chat(Misbehaviour::EndlessSseLine, Duration::from_secs(3600)).await {
        Err(BackendError::Misbehaved(message)) => {
            assert!(message.contains("SSE line passed"), "{message}")
        }
        other => panic!("expected the SSE line cap's error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_endless_models_list_is_refused_at_its_cap() {
    let client = client(stand_in(Misbehaviour::EndlessJson).await);
    // `GET /models` has a 5 s timeout of its own; the cap ends the read long before it, and a
    // timeout would say "timed out" instead of naming the limit.
    match client.health().await {
        Err(BackendError::Unreachable(message)) => assert!(message.contains("byte limit"), "{message}"),
        other => panic!("expected the body cap's error, got {other:?}"),
    }
}
