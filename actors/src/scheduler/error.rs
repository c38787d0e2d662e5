//! Why a challenge was not answered by a worker: the scheduler's one error enum, read by the
//! front door (which maps it to a status through `src/http/error.rs`) and by hedging (which
//! passes an attempt's outcome on).

use crate::inference::request::BackendError;

/// Why a challenge was not answered by a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("no backend worker is ready")]
    NoWorker,
    #[error("the miner is at capacity ({in_flight} challenges in flight)")]
    Busy { in_flight: usize, retry_after_secs: u64 },
    /// No worker could start the challenge in time to produce a useful answer before its deadline.
    #[error("no worker can start this challenge in time to answer it before its deadline")]
    TooLate { retry_after_secs: u64 },
    /// Every worker that could take it would make it wait, or slow the challenges it runs, by
    /// more than `ADMISSION_MAX_WAIT_MS` (see [`crate::scheduler::admission`]).
    #[error("every worker is busy: this challenge would wait {wait_ms} ms for a sequence, or slow those running, past ADMISSION_MAX_WAIT_MS")]
    WaitTooLong { wait_ms: u64, retry_after_secs: u64 },
    #[error("admission is closed (the miner is shutting down)")]
    Closed,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the worker did not answer before the deadline")]
    Timeout,
}

impl ScheduleError {
    /// Nothing was started: the challenge was refused (or admission is closed).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NoWorker | Self::Busy { .. } | Self::TooLate { .. } | Self::WaitTooLong { .. } | Self::Closed
        )
    }
}
