//! Connections, counted per source address at accept, before any HTTP is parsed.
//!
//! actix's own cap (`max_connections`) is global: one host opening thousands of connections that
//! trickle their headers or bodies fills it, and then accepts wait in the backlog for everyone,
//! validators included. So every accepted connection passes [`ConnTracker::admit`] first (actix's
//! `on_connect`, which runs before the first read):
//! * an address holds at most `MAX_CONNECTIONS_PER_ADDRESS` connections, unless it is *proven* (a
//!   validator completed a signed key exchange from it, or the Challenge API reports it);
//! * unproven addresses together hold at most three quarters of `MAX_CONNECTIONS`: the last quarter
//!   stays for proven ones, so strangers on many addresses cannot take every slot either;
//! * a connection over a cap is shut down at once (the dispatcher reads end-of-stream and drops
//!   it): it costs the attacker a handshake and us one accept, and never waits in a queue.
//!
//! actix's header deadline (`HEADER_READ_TIMEOUT_SECONDS`) covers only a connection's *first*
//! request; a client that sends one request and then trickles the next head, a byte at a time,
//! would hold its connection forever (each byte also clears the keep-alive timer). The watchdog
//! shuts down a connection that has had no request in progress for longer than keep-alive plus
//! the header deadline — an idle one would have been closed by then, so one still open is
//! trickling.
//!
//! Each admitted connection carries a [`ConnGuard`] in its connection data: a duplicate of its
//! socket (so that a shutdown reaches this connection and never a later one that reuses the
//! number) and its activity, marked by [`mark_requests`] around every request. Dropping the
//! guard, when actix drops the connection, releases its place.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use loosh_actors::front_door::FrontDoor;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// The connection caps, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// `MAX_CONNECTIONS`: all connections together.
    pub total: usize,
    /// `MAX_CONNECTIONS_PER_ADDRESS`: one unproven address's connections.
    pub per_address: usize,
    /// A connection with no request in progress for longer than this is trickling a head (keep-alive
    /// plus the header deadline).
    pub idle_head_limit: Duration,
}

impl ConnLimits {
    /// What unproven addresses may hold together: three quarters of the total, so that a quarter
    /// stays for validators' proven addresses.
    pub fn strangers(&self) -> usize {
        (self.total - self.total / 4).max(1)
    }
}

/// `/metrics` series of the connection layer.
pub struct ConnMetrics {
    open: IntGauge,
    refused: IntCounterVec,
    dropped: IntCounterVec,
}

impl ConnMetrics {
    fn new(registry: &Registry) -> Self {
        let open = IntGauge::new("loosh_connections_open", "Connections open on the validators' port").unwrap();
        let refused = IntCounterVec::new(
            Opts::new(
                "loosh_connections_refused_total",
                "Connections shut at accept, before any HTTP: over the per-address cap, or over the share unproven addresses hold together",
            ),
            &["reason"],
        )
        .unwrap();
        let dropped = IntCounterVec::new(
            Opts::new(
                "loosh_connections_dropped_total",
                "Connections dropped for not finishing a request head in time: the first request (actix's header deadline) or a later one (the watchdog)",
            ),
            &["reason"],
        )
        .unwrap();
        // A second node in the same process (tests) shares the first one's series.
        for c in [
            Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
            Box::new(dropped.clone()),
        ] {
            let _ = registry.register(c);
        }
        for r in ["address_cap", "strangers_cap"] {
            refused.with_label_values(&[r]);
        }
        for r in ["first_head_deadline", "later_head_deadline"] {
            dropped.with_label_values(&[r]);
        }
        Self { open, refused, dropped }
    }
}

/// One admitted connection: its place in the counts, its socket and its activity.
pub struct ConnGuard {
    id: u64,
    ip: IpAddr,
    proven: bool,
    tracker: Arc<ConnTracker>,
    info: Arc<ConnInfo>,
}

/// What the watchdog needs of a connection.
struct ConnInfo {
    /// A duplicate of the connection's socket: shutting it down ends this connection only.
    socket: TcpStream,
    opened: Instant,
    /// Milliseconds since `opened` when the last request ended (0: none yet).
    last_done_ms: AtomicU64,
    requests: AtomicU64,
    in_request: AtomicBool,
    shut_by_watchdog: AtomicBool,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let t = &self.tracker;
        t.live.remove(&self.id);
        let mut counts = t.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
        if !self.proven {
            counts.strangers = counts.strangers.saturating_sub(1);
        }
        counts.total = counts.total.saturating_sub(1);
        t.metrics.open.set(counts.total as i64);
        let info = &self.info;
        if info.requests.load(Ordering::Relaxed) == 0 && info.opened.elapsed() >= t.header_deadline {
            t.metrics.dropped.with_label_values(&["first_head_deadline"]).inc();
        }
    }
}

#[derive(Default)]
struct Counts {
    per_ip: HashMap<IpAddr, usize>,
    strangers: usize,
    total: usize,
}

/// The counts behind [`ConnGuard`]s, and the watchdog's list.
pub struct ConnTracker {
    limits: ConnLimits,
    header_deadline: Duration,
    door: FrontDoor,
    counts: Mutex<Counts>,
    live: DashMap<u64, Arc<ConnInfo>>,
    next_id: AtomicU64,
    metrics: ConnMetrics,
}

impl ConnTracker {
    pub fn new(limits: ConnLimits, header_deadline: Duration, door: FrontDoor) -> Arc<Self> {
        let metrics = ConnMetrics::new(&door.metrics().registry);
        Arc::new(Self {
            limits,
            header_deadline,
            door,
            counts: Mutex::new(Counts::default()),
            live: DashMap::new(),
            next_id: AtomicU64::new(0),
            metrics,
        })
    }

    /// Whether `ip` has proven itself as a validator's (a completed signed exchange from it, or a
    /// Challenge API report): such an address is never held to the per-address cap.
    fn proven(&self, ip: IpAddr) -> bool {
        self.door.known_peers.is_proven_ip(ip) || self.door.auth.reports_ip(ip)
    }

    /// Admits a just-accepted connection (actix's `on_connect`), or shuts it at once.
    pub fn admit(self: &Arc<Self>, stream: &tokio::net::TcpStream) -> Option<ConnGuard> {
        let (Ok(peer), Ok(fd)) = (stream.peer_addr(), stream.as_fd().try_clone_to_owned()) else {
            return None;
        };
        let socket = TcpStream::from(fd);
        let ip = peer.ip();
        let proven = self.proven(ip);
        let refused = {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let here = c.per_ip.get(&ip).copied().unwrap_or(0);
            let refused = if c.total >= self.limits.total {
                Some("strangers_cap")
            } else if proven {
                None
            } else if here >= self.limits.per_address {
                Some("address_cap")
            } else if c.strangers >= self.limits.strangers() {
                Some("strangers_cap")
            } else {
                None
            };
            if refused.is_none() {
                *c.per_ip.entry(ip).or_insert(0) += 1;
                c.strangers += usize::from(!proven);
                c.total += 1;
                self.metrics.open.set(c.total as i64);
            }
            refused
        };
        if let Some(reason) = refused {
            self.metrics.refused.with_label_values(&[reason]).inc();
            let _ = socket.shutdown(Shutdown::Both);
            return None;
        }
        let info = Arc::new(ConnInfo {
            socket,
            opened: Instant::now(),
            last_done_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_request: AtomicBool::new(false),
            shut_by_watchdog: AtomicBool::new(false),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live.insert(id, info.clone());
        Some(ConnGuard { id, ip, proven, tracker: self.clone(), info })
    }

    /// Shuts down every connection that has had no request in progress, after at least one, for
    /// longer than [`ConnLimits::idle_head_limit`]: it is trickling its next head.
    pub fn sweep(&self) {
        let limit = self.limits.idle_head_limit.as_millis() as u64;
        for entry in self.live.iter() {
            let info = entry.value();
            if info.in_request.load(Ordering::Relaxed) || info.requests.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let idle =
                (info.opened.elapsed().as_millis() as u64).saturating_sub(info.last_done_ms.load(Ordering::Relaxed));
            if idle > limit && !info.shut_by_watchdog.swap(true, Ordering::Relaxed) {
                let _ = info.socket.shutdown(Shutdown::Both);
                self.metrics.dropped.with_label_values(&["later_head_deadline"]).inc();
            }
        }
    }

    /// Runs [`Self::sweep`] every second until the tracker is dropped.
    pub fn spawn_watchdog(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("conn-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                match weak.upgrade() {
                    Some(tracker) => tracker.sweep(),
                    None => return,
                }
            })
            .expect("the connection watchdog thread starts");
    }
}

/// Marks the request in flight on its connection, for the watchdog (wrapped around every route).
pub fn mark_requests<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let guard = req.conn_data::<ConnGuard>().map(|g| g.info.clone());
    if let Some(info) = &guard {
        info.in_request.store(true, Ordering::Relaxed);
        info.requests.fetch_add(1, Ordering::Relaxed);
    }
    let fut = srv.call(req);
    async move {
        let res = fut.await;
        if let Some(info) = guard {
            info.last_done_ms.store(info.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
            info.in_request.store(false, Ordering::Relaxed);
        }
        res
    }
}
