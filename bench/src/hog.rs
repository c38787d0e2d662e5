//! The connection hog (issue 30): one host opening thousands of connections that trickle their
//! headers or their bodies and reopen when dropped, as `bench attack --hog` and the tests run it.
//!
//! The attacker's connections leave from `from` (a loopback alias such as 127.0.0.2: another host,
//! as the miner sees it). Half never finish their headers (a header line a second), half send a
//! complete key-exchange head announcing an 8 KiB body and then a byte a second. Each one that the
//! miner drops or refuses is reopened after `reopen_after`, until `duration` has passed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// What the hog managed.
#[derive(Debug, Default, Clone)]
pub struct HogReport {
    /// Connections opened (accepted by the kernel), in all.
    pub opened: usize,
    /// Connections the miner closed (refused at accept, or dropped at a deadline).
    pub dropped: usize,
    /// The most connections held open at once.
    pub most_held: usize,
    /// The longest a connection lived before the miner closed it.
    pub longest_held: Duration,
}

/// Runs `connections` hogging loops from `from` against `target` for `duration`.
pub async fn hog(
    target: SocketAddr,
    from: IpAddr,
    connections: usize,
    duration: Duration,
    reopen_after: Duration,
) -> HogReport {
    let end = Instant::now() + duration;
    let opened = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(AtomicUsize::new(0));
    let most_held = Arc::new(AtomicUsize::new(0));
    let longest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let mut tasks = Vec::with_capacity(connections);
    for i in 0..connections {
        let (opened, dropped, held, most_held, longest) =
            (opened.clone(), dropped.clone(), held.clone(), most_held.clone(), longest.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let Ok(socket) = TcpSocket::new_v4() else { return };
                if socket.bind(SocketAddr::new(from, 0)).is_err() {
                    tokio::time::sleep(reopen_after).await;
                    continue;
                }
                let Ok(mut stream) = socket.connect(target).await else {
                    tokio::time::sleep(reopen_after).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let now_held = held.fetch_add(1, Ordering::Relaxed) + 1;
                most_held.fetch_max(now_held, Ordering::Relaxed);
                let began = Instant::now();
                let head = if i % 2 == 0 {
                    format!("POST /fiber/challenge HTTP/1.1\r\nHost: {target}\r\n")
                } else {
                    format!(
                        "POST /fiber/key-exchange HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: 8000\r\n\r\n{{"
                    )
                };
                let closed_by_miner = 'conn: {
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        break 'conn true;
                    }
                    let mut buf = [0u8; 512];
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    tick.tick().await;
                    loop {
                        let left = end.saturating_duration_since(Instant::now());
                        tokio::select! {
                            r = stream.read(&mut buf) => match r {
                                Ok(0) | Err(_) => break 'conn true,
                                Ok(_) => {} // an answer (408, 401); the close follows
                            },
                            _ = tick.tick() => {
                                let more: &[u8] = if i % 2 == 0 { b"X-Slow: 1\r\n" } else { b"x" };
                                if stream.write_all(more).await.is_err() {
                                    break 'conn true;
                                }
                            }
                            _ = tokio::time::sleep(left) => break 'conn false,
                        }
                    }
                };
                held.fetch_sub(1, Ordering::Relaxed);
                if closed_by_miner {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    let mut l = longest.lock().unwrap_or_else(|e| e.into_inner());
                    *l = (*l).max(began.elapsed());
                }
                tokio::time::sleep(reopen_after).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let longest_held = *longest.lock().unwrap_or_else(|e| e.into_inner());
    HogReport {
        opened: opened.load(Ordering::Relaxed),
        dropped: dropped.load(Ordering::Relaxed),
        most_held: most_held.load(Ordering::Relaxed),
        longest_held,
    }
}
