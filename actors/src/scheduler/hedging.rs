//! Hedged dispatch: a challenge whose first token is late is started on an idle sibling too, and
//! the first attempt to produce a token wins.
//!
//! Every responder's time share counts in the validator's reward, and a worker can be slow for a
//! while without being dead (a long prefill ahead of it, a throttled GPU, a remote server's
//! queue): re-dispatch on death alone leaves that time on the table. The threshold follows the
//! node's recent times to first token (a multiple of their median, never under a floor), so a
//! hedge fires only on an outlier, and only onto a worker with a free sequence, so it never
//! delays other work. The loser is cancelled: its engine drops the sequence at its next step and
//! the scheduler frees its slot when the attempt ends.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::error::ScheduleError;
use crate::inference::request::{Generation, JobControl};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct HedgeSettings {
    /// `HEDGING`: race late challenges on an idle sibling.
    pub enabled: bool,
    /// `HEDGE_AFTER_FACTOR`: a first token this many times later than the recent median is late.
    pub factor: f64,
    /// `HEDGE_MIN_MS`: never hedge sooner than this (a fast node's median is a few milliseconds,
    /// and a hedge costs a second prefill).
    pub min_after: Duration,
}

impl Default for HedgeSettings {
    fn default() -> Self {
        Self { enabled: true, factor: 3.0, min_after: Duration::from_millis(500) }
    }
}

/// Samples kept for the median: enough to be stable, few enough to follow a change of load.
const WINDOW: usize = 32;

/// The node's recent times to first token (from dispatch, on a free sequence), all workers.
#[derive(Debug, Default)]
pub struct RecentTtft {
    samples: VecDeque<Duration>,
}

impl RecentTtft {
    pub fn push(&mut self, ttft: Duration) {
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(ttft);
    }

    /// How long to wait for a first token before hedging; `None` until a first token was measured.
    pub fn hedge_after(&self, settings: &HedgeSettings) -> Option<Duration> {
        if !settings.enabled || self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        Some(median.mul_f64(settings.factor).max(settings.min_after))
    }
}

/// One attempt of a challenge on one worker: its signals and the task that runs it (which frees
/// the worker's slot when it ends, whoever awaits it).
pub struct Attempt {
    pub control: JobControl,
    pub handle: JoinHandle<Result<Generation, ScheduleError>>,
}

/// The outcome of an attempt's task (a panicked task reads as a worker gone).
async fn finish(handle: JoinHandle<Result<Generation, ScheduleError>>) -> Result<Generation, ScheduleError> {
    handle.await.unwrap_or(Err(ScheduleError::Backend(crate::inference::request::BackendError::WorkerGone)))
}

/// Awaits an attempt that is not raced.
pub async fn single(attempt: Attempt) -> Result<Generation, ScheduleError> {
    finish(attempt.handle).await
}

/// Races the `first` attempt against its `hedge`: the first to produce a token wins, the other is
/// cancelled. An attempt that ends without a token (cut, failed) leaves the race to the other;
/// if both end so, the first one's answer stands (its error says more about the challenge).
pub async fn race(first: Attempt, hedge: Attempt, metrics: &Metrics) -> Result<Generation, ScheduleError> {
    let Attempt { control: first_ctl, handle: mut first_task } = first;
    let Attempt { control: hedge_ctl, handle: mut hedge_task } = hedge;
    let first_wins = tokio::select! {
        biased;
        () = first_ctl.wait_first_token() => true,
        () = hedge_ctl.wait_first_token() => false,
        ended = &mut first_task => {
            let ended = ended.unwrap_or(Err(ScheduleError::Backend(crate::inference::request::BackendError::WorkerGone)));
            let other = finish(hedge_task).await;
            let hedge_won = hedge_ctl.has_first_token() && other.is_ok();
            metrics.hedge_wins.with_label_values(&[if hedge_won { "hedge" } else { "first" }]).inc();
            return if hedge_won || ended.is_err() && other.is_ok() { other } else { ended };
        }
        ended = &mut hedge_task => {
            let ended = ended.unwrap_or(Err(ScheduleError::Backend(crate::inference::request::BackendError::WorkerGone)));
            let other = finish(first_task).await;
            let hedge_won = other.is_err() && ended.is_ok();
            metrics.hedge_wins.with_label_values(&[if hedge_won { "hedge" } else { "first" }]).inc();
            return if hedge_won { ended } else { other };
        }
    };
    metrics.hedge_wins.with_label_values(&[if first_wins { "first" } else { "hedge" }]).inc();
    if first_wins {
        hedge_ctl.cancel();
        finish(first_task).await
    } else {
        first_ctl.cancel();
        finish(hedge_task).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_a_multiple_of_the_median_with_a_floor() {
        let settings = HedgeSettings { enabled: true, factor: 3.0, min_after: Duration::from_millis(100) };
        let mut recent = RecentTtft::default();
        assert_eq!(recent.hedge_after(&settings), None, "nothing measured: no hedging");
        for ms in [10, 400, 20, 30, 5000] {
            recent.push(Duration::from_millis(ms));
        }
        assert_eq!(recent.hedge_after(&settings), Some(Duration::from_millis(100)), "3 x 30 ms is under the floor");
        for _ in 0..WINDOW {
            recent.push(Duration::from_millis(200));
        }
        assert_eq!(recent.hedge_after(&settings), Some(Duration::from_millis(600)), "old samples leave the window");
        assert_eq!(recent.hedge_after(&HedgeSettings { enabled: false, ..settings }), None);
    }
}
