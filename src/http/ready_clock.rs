//! How long the node has had no ready worker, as `/health` measures it (kept in the handlers'
//! shared state, read and advanced by `/health` alone).

/// Since when no worker has been ready, as `/health` saw it: from the start until a worker is first
/// ready, then from the first `/health` that found none ready. (Docker's HEALTHCHECK asks every
/// 30 s, so a loss of every worker is noticed at most one interval late.)
#[derive(Debug, Default)]
pub struct ReadyClock {
    none_ready_since: std::sync::Mutex<Option<std::time::Instant>>,
    ever_ready: std::sync::atomic::AtomicBool,
}

impl ReadyClock {
    /// How long no worker has been ready (zero while one is).
    pub fn none_ready_for(&self, any_ready: bool, started: std::time::Instant) -> std::time::Duration {
        use std::sync::atomic::Ordering;
        let mut since = self.none_ready_since.lock().unwrap_or_else(|e| e.into_inner());
        if any_ready {
            self.ever_ready.store(true, Ordering::Relaxed);
            *since = None;
            return std::time::Duration::ZERO;
        }
        let from = *since.get_or_insert_with(|| {
            if self.ever_ready.load(Ordering::Relaxed) {
                std::time::Instant::now()
            } else {
                started
            }
        });
        from.elapsed()
    }
}
