//! Load generation shared by the benchmarks: `n` calls with a fixed number in flight, and the
//! throughput and latency percentiles of what came back.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Stats {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub(crate) fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    let pick = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    Stats { rps: lat.len() as f64 / wall.as_secs_f64(), p50_ms: pick(0.5), p99_ms: pick(0.99) }
}

/// Runs `n` calls of `f` with `conc` in flight; returns per-call latencies and the wall time.
pub(crate) async fn drive<F, Fut>(n: usize, conc: usize, f: F) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                f(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}
