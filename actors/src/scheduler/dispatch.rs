//! Where a challenge goes: each ready worker's slot (the jobs it holds, as planned, and its
//! measured pace) and the pick among them — the worker expected to have a useful answer first,
//! within the queue bound, the deadline and the wait cap of [`super::admission`]. Pure
//! book-keeping, no messages: the scheduler actor (`mod.rs`) calls it and runs what it places.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::admission::{expected_start, imposed_delay, AdmissionSettings, JobPlan, Pace};
use crate::inference::request::GenerationRequest;
use crate::workers::worker::WorkerMsg;

/// A job placed on a worker: what the dispatching task needs to run it there.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub name: String,
    pub actor: ActorRef<WorkerMsg>,
    pub job: u64,
    /// The job got a free sequence at once (its time to first token measures the worker).
    pub started_free: bool,
    /// Sequences the worker ran when the job started, the job included (its pace is that batch's).
    pub batch: usize,
}

pub(super) struct Slot {
    pub(super) actor: ActorRef<WorkerMsg>,
    /// Sequences the worker generates at once.
    pub(super) parallel: usize,
    /// The jobs this worker holds (running or waiting), by id (placement order), as planned.
    pub(super) jobs: BTreeMap<u64, JobPlan>,
    /// Smoothed seconds per generation on this worker, for the retry hint.
    pub(super) avg_secs: f64,
    pub(super) pace: Pace,
    /// Being removed: takes nothing new.
    pub(super) retiring: bool,
}

impl Slot {
    pub(super) fn queued(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn expected_start(&self, now: Instant) -> Instant {
        expected_start(now, self.jobs.values(), self.parallel, &self.pace)
    }

    pub(super) fn imposed_delay(&self, now: Instant) -> Duration {
        imposed_delay(now, self.jobs.values(), self.parallel, &self.pace)
    }
}

/// Why no worker was picked.
pub(super) enum NoPick {
    /// Every worker's queue is full.
    Full,
    /// Some worker has room, but none can start in time; retry after this long.
    TooLate(Duration),
    /// Some worker could answer in time, but each would make the challenge wait (or slow running
    /// ones) past the wait cap: the shortest of those costs, whether it was a slowdown imposed on
    /// running challenges rather than a wait, and when a sequence frees.
    WaitTooLong { wait: Duration, slowdown: bool, free_in: Duration },
}

/// The ready worker expected to have a useful answer to `request` first: when it would get a
/// sequence, plus its time to the first [`AdmissionSettings::min_useful_tokens`]. Full workers
/// and `avoid` are skipped; with time-aware admission, so are measured workers that could
/// not produce them before the deadline (unmeasured ones are trusted), and, unless `waive_wait`,
/// measured workers that would make it wait, or slow their running challenges, past
/// [`AdmissionSettings::max_wait`].
pub(super) fn pick(
    workers: &BTreeMap<String, Slot>,
    admission: &AdmissionSettings,
    max_queue: usize,
    request: &GenerationRequest,
    avoid: Option<&str>,
    waive_wait: bool,
    now: Instant,
) -> Result<String, NoPick> {
    let useful_tokens = admission.min_useful_tokens.min(request.max_tokens).max(1);
    let wait_cap = admission.max_wait.filter(|_| admission.enabled && !waive_wait);
    let mut earliest_start: Option<Instant> = None;
    let mut too_long: Option<(Duration, bool)> = None;
    let mut best: Option<(&String, Instant, f64)> = None;
    for (name, s) in workers {
        if s.retiring || s.queued() >= s.parallel + max_queue || Some(name.as_str()) == avoid {
            continue;
        }
        let start = s.expected_start(now);
        earliest_start = Some(earliest_start.map_or(start, |e| e.min(start)));
        let useful_at = s.pace.time_to(useful_tokens).map(|d| start + d);
        if admission.enabled && useful_at.is_some_and(|t| t > request.deadline) {
            continue;
        }
        if let Some(cap) = wait_cap.filter(|_| s.pace.is_measured()) {
            let (wait, imposed) = (start.saturating_duration_since(now), s.imposed_delay(now));
            let cost = (wait.max(imposed), imposed > wait);
            if cost.0 > cap {
                too_long = Some(too_long.map_or(cost, |t| t.min(cost)));
                continue;
            }
        }
        let at = useful_at.unwrap_or(start);
        let load = (s.queued() + 1) as f64 / s.parallel as f64;
        if best.is_none_or(|(_, t, l)| (at, load) < (t, l)) {
            best = Some((name, at, load));
        }
    }
    match (best, earliest_start, too_long) {
        (Some((name, _, _)), _, _) => Ok(name.clone()),
        (None, Some(start), Some((wait, slowdown))) => {
            Err(NoPick::WaitTooLong { wait, slowdown, free_in: start.saturating_duration_since(now) })
        }
        (None, Some(start), None) => Err(NoPick::TooLate(start.saturating_duration_since(now))),
        (None, None, _) => Err(NoPick::Full),
    }
}
