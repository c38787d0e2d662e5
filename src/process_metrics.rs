//! `/metrics` beside the actors' own: `loosh_build_info` (which build is running, for dashboards
//! that span an upgrade) and the standard `process_*` series (CPU, memory, file descriptors,
//! threads, start time), read from `/proc` at each scrape.
//!
//! The prometheus crate's own process collector needs its `process` feature and the `procfs`
//! crate; the six numbers it would give are three small files away.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGaugeVec, Opts, Registry};

/// Kernel clock ticks per second in `/proc/*/stat` (USER_HZ), as the C library reports it: 100 on
/// the common ABIs, but not a constant of the kernel's interface.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Adds `loosh_build_info` and the process collector to `registry` (once per registry).
pub fn register(registry: &Registry) -> prometheus::Result<()> {
    let info = IntGaugeVec::new(
        Opts::new("loosh_build_info", "The running build: version and compiled features (always 1)"),
        &["version", "features"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), &build_features()]).set(1);
    registry.register(Box::new(info))?;
    registry.register(Box::new(ProcessCollector::new()?))
}

/// The optional features compiled in, comma-separated (`loosh_build_info`'s `features` label).
pub fn build_features() -> String {
    let features = [("cuda", cfg!(feature = "cuda")), ("test-hooks", cfg!(feature = "test-hooks"))];
    features.iter().filter(|f| f.1).map(|f| f.0).collect::<Vec<_>>().join(",")
}

struct ProcessCollector {
    cpu: Counter,
    resident: Gauge,
    virtual_mem: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
    /// Serialises scrapes: the CPU counter moves by the difference since the last one.
    lock: Mutex<()>,
}

impl ProcessCollector {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            cpu: Counter::new("process_cpu_seconds_total", "User and system CPU time spent, in seconds")?,
            resident: Gauge::new("process_resident_memory_bytes", "Resident memory size in bytes")?,
            virtual_mem: Gauge::new("process_virtual_memory_bytes", "Virtual memory size in bytes")?,
            open_fds: Gauge::new("process_open_fds", "Open file descriptors")?,
            max_fds: Gauge::new("process_max_fds", "The limit on open file descriptors")?,
            threads: Gauge::new("process_threads", "OS threads")?,
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the epoch, in seconds",
            )?,
            lock: Mutex::new(()),
        })
    }

    fn all(&self) -> [&dyn Collector; 7] {
        [&self.cpu, &self.resident, &self.virtual_mem, &self.open_fds, &self.max_fds, &self.threads, &self.start_time]
    }

    fn refresh(&self) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name, which may itself hold spaces and parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        // Numbered as in proc(5) minus 3: utime 14, stime 15, num_threads 20, starttime 22, vsize 23.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let cpu = (utime + stime) / ticks_per_sec();
            self.cpu.inc_by((cpu - self.cpu.get()).max(0.0));
        }
        if let Some(threads) = field(20) {
            self.threads.set(threads);
        }
        if let Some(vsize) = field(23) {
            self.virtual_mem.set(vsize);
        }
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok()));
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            self.start_time.set(boot + start / ticks_per_sec());
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(kb) =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        {
            self.resident.set(kb * 1024.0);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as f64);
        }
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        if let Some(max) = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files")?.split_whitespace().next()?.parse::<f64>().ok())
        {
            self.max_fds.set(max);
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.all().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh();
        self.all().into_iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_and_build_are_described_in_the_exposition() {
        let registry = Registry::new();
        register(&registry).unwrap();
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start > now - 86_400.0 && start <= now + 1.0, "{start} vs {now}");
        let info = format!(
            "loosh_build_info{{features=\"{}\",version=\"{}\"}} 1",
            build_features(),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&info), "{text}");
        // Registered once per registry.
        assert!(register(&registry).is_err());
    }
}
