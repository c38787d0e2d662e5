//! Staying selectable, against the real binary: what the validator's selection poll and its
//! connection pool see while the miner is busy (SCORING.md: `false`, a non-200 or a poll slower
//! than 3 s takes the miner out of selection; a challenge refused with 503 costs nothing).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ClientError, ValidatorClient};
use serde_json::Value;

/// The validator's `/availability` timeout (`availability_worker.py`).
const VALIDATOR_POLL_TIMEOUT: Duration = Duration::from_secs(3);

fn client_from(local: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder().no_proxy().local_address(local).timeout(Duration::from_secs(10)).build().unwrap()
}

/// One poll as the validator sends it: status, JSON and how long it took.
async fn poll(http: &reqwest::Client, miner: &MinerProcess, hotkey: &str) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let res = http.get(format!("{}/availability", miner.url)).header("validator-hotkey", hotkey).send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body, t0.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_miner_stays_selectable_and_its_validator_is_never_rate_limited() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let miner = MinerProcess::start(
        &model,
        true,
        &[
            ("VALIDATOR_HOTKEYS", validator.ss58()),
            ("RATE_LIMIT_ENABLED", "true"),
            ("MAX_CONCURRENT_REQUESTS", "2"),
            ("MAX_MODEL_LEN", "4096"),
        ],
    );
    // The validator proves itself from 127.0.0.1 with a signed exchange, then keeps 24 challenges
    // in flight against 2 slots for 20 s while polling every 0.25 s, 16 times the real poll rate
    // (30 s) and far past the per-address budget of an unproven caller (20 a minute).
    let mut client = ValidatorClient::new(&miner.url, validator.clone());
    client.handshake().await.unwrap();
    let load_for = Duration::from_secs(20);
    let end = Instant::now() + load_for;
    let mut senders = Vec::new();
    for i in 0..24 {
        let client = client.clone();
        let body = challenge_body(&format!("Tell me a story about the number {i}."), 96, 0.7);
        senders.push(tokio::spawn(async move {
            let (mut answered, mut busy, mut limited) = (0u32, 0u32, 0u32);
            while Instant::now() < end {
                match client.challenge_once(&body).await {
                    Ok(_) => answered += 1,
                    Err(ClientError::Status { status: 503, .. }) => busy += 1,
                    Err(ClientError::Status { status: 429, .. }) => limited += 1,
                    Err(e) => panic!("challenge {i}: {e}"),
                }
                // A refused challenge is retried after a pause, as a validator's next round would
                // come: pacing the load, not waiting for anything.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (answered, busy, limited)
        }));
    }
    let http = client_from(None);
    let (mut polls, mut available, mut too_many, mut latencies) = (0u32, 0u32, 0u32, Vec::new());
    let mut reasons = Vec::new();
    while Instant::now() < end {
        let (status, body, took) = poll(&http, &miner, validator.ss58()).await;
        polls += 1;
        latencies.push(took);
        match status {
            200 if body["available"] == true => available += 1,
            200 => reasons.push(body["reason"].to_string()),
            429 => too_many += 1,
            other => panic!("/availability answered {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (mut answered, mut busy, mut limited) = (0, 0, 0);
    for s in senders {
        let (a, b, l) = s.await.unwrap();
        (answered, busy, limited) = (answered + a, busy + b, limited + l);
    }
    latencies.sort();
    let (p50, p99, max) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99), *latencies.last().unwrap());
    println!(
        "availability under load: {available}/{polls} true, {too_many} x 429, p50 {p50:?}, p99 {p99:?}, max {max:?}; \
         challenges: {answered} answered, {busy} refused 503, {limited} refused 429"
    );
    assert!(busy > 0, "the load never filled the miner's 2 slots, so the test proves nothing");
    assert!(answered > 0, "no challenge was answered under load");
    assert_eq!(too_many, 0, "the proven validator's polls were rate limited");
    assert!(available * 100 >= polls * 95, "available on {available} of {polls} polls; false because: {reasons:?}");
    assert!(max < VALIDATOR_POLL_TIMEOUT, "a poll took {max:?}: the validator would have dropped us");

    // The exemption is the proven address's, not the header's: a caller on another address naming
    // the same (public) hotkey has only the per-address budget of a validator.
    let elsewhere = client_from(Some(IpAddr::from([127, 0, 0, 2])));
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(poll(&elsewhere, &miner, validator.ss58()).await.0);
    }
    assert!(statuses.iter().take(20).all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "an unproven address polled without limit: {statuses:?}");

    // A validator this miner does not serve is told so, not invited to send challenges.
    let stranger = Hotkey::ephemeral();
    let (status, body, _) = poll(&client_from(Some(IpAddr::from([127, 0, 0, 3]))), &miner, stranger.ss58()).await;
    assert_eq!(status, 200);
    assert_eq!(body["available"], false, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("not allowed"), "{body}");
}

/// Sends `GET /availability` on `stream` (keep-alive) and reads exactly one response.
fn keep_alive_poll(stream: &mut TcpStream, host: &str) -> std::io::Result<String> {
    write!(stream, "GET /availability HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by the miner"));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(format!("{head}{}", String::from_utf8_lossy(&body)))
}

#[test]
fn a_connection_idle_past_the_validators_pool_expiry_is_still_answered() {
    let model = tiny_model();
    let miner = MinerProcess::start(&model, true, &[]);
    let host = miner.url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let first = keep_alive_poll(&mut stream, host).unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let server_port = stream.peer_addr().unwrap().port();
    let client_port = stream.local_addr().unwrap().port();
    assert!(
        server_socket_has_nodelay(miner.pid(), server_port, client_port),
        "the miner's end of the connection has Nagle's algorithm on"
    );
    // Idle three times as long as the validator's httpx keeps a connection: the miner must not be
    // the side that closes first.
    std::thread::sleep(Duration::from_secs(15));
    let second = keep_alive_poll(&mut stream, host).expect("the idle connection was closed by the miner");
    assert!(second.starts_with("HTTP/1.1 200") && second.contains("\"available\":true"), "{second}");
}

#[test]
fn the_validators_httpx_pool_reusing_connections_at_its_expiry_loses_no_request() {
    let model = tiny_model();
    let validator = Hotkey::ephemeral();
    let miner = MinerProcess::start(&model, true, &[("VALIDATOR_HOTKEYS", validator.ss58())]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/keepalive_client.py");
    let seconds = std::env::var("LOOSH_KEEPALIVE_TEST_SECONDS").unwrap_or_else(|_| "180".into());
    let out = std::process::Command::new(python())
        .args([script, "--url", &miner.url, "--hotkey", validator.ss58(), "--seconds", &seconds, "--tasks", "16"])
        .output()
        .expect("the Python test environment runs (scripts/install.sh --test)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    println!("httpx keep-alive reuse: {report}");
    assert_eq!(report["failed"], 0, "requests lost: {report}");
    let (requests, reused) = (report["requests"].as_u64().unwrap(), report["reused"].as_u64().unwrap());
    assert!(reused > 0, "no connection was reused, so the race was never run: {report}");
    assert!(requests >= 16 * 10, "too few requests to say anything: {report}");
}

/// Whether the miner's socket for the connection `server_port` ⇄ `client_port` has `TCP_NODELAY`:
/// found by its inode in the miner's `/proc/PID/net/tcp`, duplicated into this process with
/// `pidfd_getfd(2)` (Linux 5.6+, same user), and asked with `getsockopt`.
fn server_socket_has_nodelay(pid: u32, server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    let inode = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| port_of(f[1]) == server_port && port_of(f[2]) == client_port)
        .map(|f| f[9].to_string())
        .expect("the miner holds the connection");
    let target = format!("socket:[{inode}]");
    let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == target))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .expect("the miner has a descriptor for the connection");
    // SAFETY: plain syscalls on descriptors this function owns and closes; `value` outlives the call.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
        assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let ours = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as libc::c_int;
        assert!(ours >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let rc = libc::getsockopt(
            ours,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
        libc::close(ours);
        libc::close(pidfd);
        value != 0
    }
}
