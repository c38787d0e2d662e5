//! The scheduler: admits challenges and routes each to a ready backend worker.
//!
//! Admission is bounded (`MAX_CONCURRENT_REQUESTS` in flight across the node, and a per-worker
//! queue bound): when full, a challenge is refused at once with a retry hint, never parked until
//! the validator gives up. Among ready workers it picks the one expected to finish first (queue
//! depth over its parallel sequences, times its measured time per challenge). A challenge whose
//! worker dies is re-dispatched once to a sibling when its deadline leaves room. The supervisor
//! tells it which workers are up. Its status is published on a `watch` channel after every message,
//! so `/availability` and the front door's readiness check read it without a mailbox round trip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use crate::backend_worker::WorkerMsg;
use crate::inference::request::{BackendError, Generation, GenerationRequest};
use crate::metrics::Metrics;

/// Why a challenge was not answered by a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("no backend worker is ready")]
    NoWorker,
    #[error("the miner is at capacity ({in_flight} challenges in flight)")]
    Busy { in_flight: usize, retry_after_secs: u64 },
    #[error("admission is closed (the miner is shutting down)")]
    Closed,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the worker did not answer before the deadline")]
    Timeout,
}

pub enum SchedulerMsg {
    Submit {
        request: GenerationRequest,
        reply: RpcReplyPort<Result<Generation, ScheduleError>>,
        /// Set when re-dispatching after a worker died: the worker not to pick again.
        avoid: Option<String>,
    },
    WorkerUp {
        name: String,
        actor: ActorRef<WorkerMsg>,
        parallel: usize,
    },
    WorkerDown {
        name: String,
    },
    /// A dispatched generation ended (either way); frees its slot.
    Done {
        name: String,
        worker: ActorId,
        elapsed: Duration,
    },
    SetAdmission(bool),
    Status(RpcReplyPort<SchedulerStatus>),
}

/// What `/availability` and `/metrics` need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerStatus {
    pub ready_workers: usize,
    pub in_flight: usize,
    pub capacity: usize,
    pub admission_open: bool,
}

impl SchedulerStatus {
    /// Before the scheduler's first message: nothing is ready.
    pub fn starting() -> Self {
        Self { ready_workers: 0, in_flight: 0, capacity: 0, admission_open: true }
    }

    /// Would a challenge be admitted right now? `Err` carries the reason for `/availability`.
    pub fn availability(&self) -> Result<(), &'static str> {
        if !self.admission_open {
            Err("admission closed")
        } else if self.ready_workers == 0 {
            Err("no backend worker is ready")
        } else if self.in_flight >= self.capacity {
            Err("at capacity")
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// `MAX_CONCURRENT_REQUESTS`: challenges in flight across all workers.
    pub max_in_flight: usize,
    /// Challenges waiting on one worker beyond those it generates at once, before it counts as full.
    pub max_queue_per_worker: usize,
    /// Extra time past a request's deadline to wait for its worker before giving up on it.
    pub deadline_slack: Duration,
    /// A challenge whose worker died is re-dispatched to a sibling only with this much time left.
    pub redispatch_min_left: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 10,
            max_queue_per_worker: 10,
            deadline_slack: Duration::from_secs(5),
            redispatch_min_left: Duration::from_secs(5),
        }
    }
}

struct Slot {
    actor: ActorRef<WorkerMsg>,
    /// Sequences the worker generates at once.
    parallel: usize,
    queued: usize,
    /// Smoothed seconds per generation on this worker, for the retry hint.
    avg_secs: f64,
}

pub struct Scheduler;

pub struct SchedulerState {
    settings: SchedulerSettings,
    metrics: Arc<Metrics>,
    workers: BTreeMap<String, Slot>,
    in_flight: usize,
    admission_open: bool,
    published: watch::Sender<SchedulerStatus>,
}

impl SchedulerState {
    fn status(&self) -> SchedulerStatus {
        SchedulerStatus {
            ready_workers: self.workers.len(),
            in_flight: self.in_flight,
            capacity: self.settings.max_in_flight,
            admission_open: self.admission_open,
        }
    }

    /// The ready worker expected to finish a new challenge first: its queue in rounds of
    /// `parallel`, times its measured time per challenge. Full workers and `avoid` are skipped.
    fn pick(&self, avoid: Option<&str>) -> Option<String> {
        let max_queue = self.settings.max_queue_per_worker;
        self.workers
            .iter()
            .filter(|(name, s)| s.queued < s.parallel + max_queue && Some(name.as_str()) != avoid)
            .map(|(name, s)| {
                let rounds = (s.queued + 1) as f64 / s.parallel as f64;
                (name, rounds * s.avg_secs.max(1e-3), rounds)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.total_cmp(&b.2)))
            .map(|(name, _, _)| name.clone())
    }

    fn retry_after_secs(&self) -> u64 {
        let per_worker = self.in_flight as f64 / self.workers.len().max(1) as f64;
        let avg = self.workers.values().map(|s| s.avg_secs).fold(0.0, f64::max).max(1.0);
        (per_worker * avg).ceil().clamp(1.0, 30.0) as u64
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = (SchedulerSettings, Arc<Metrics>, watch::Sender<SchedulerStatus>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (settings, metrics, published): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = SchedulerState {
            settings,
            metrics,
            workers: BTreeMap::new(),
            in_flight: 0,
            admission_open: true,
            published,
        };
        state.published.send_replace(state.status());
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.published.send_replace(SchedulerStatus { ready_workers: 0, admission_open: false, ..state.status() });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Submit { request, reply, avoid } => {
                if !state.admission_open {
                    let _ = reply.send(Err(ScheduleError::Closed));
                    return Ok(());
                }
                if state.workers.is_empty() {
                    let _ = reply.send(Err(ScheduleError::NoWorker));
                    return Ok(());
                }
                let pick = state.pick(avoid.as_deref()).filter(|_| state.in_flight < state.settings.max_in_flight);
                let Some(name) = pick else {
                    let err =
                        ScheduleError::Busy { in_flight: state.in_flight, retry_after_secs: state.retry_after_secs() };
                    let _ = reply.send(Err(err));
                    return Ok(());
                };
                let slot = state.workers.get_mut(&name).expect("picked from the map");
                slot.queued += 1;
                state.in_flight += 1;
                state.metrics.in_flight.set(state.in_flight as i64);
                let worker = slot.actor.clone();
                let worker_id = worker.get_id();
                let wait = request.deadline.saturating_duration_since(Instant::now()) + state.settings.deadline_slack;
                let redispatch_min_left = state.settings.redispatch_min_left;
                let first_attempt = avoid.is_none();
                let started = Instant::now();
                tokio::spawn(async move {
                    let retry_copy = first_attempt.then(|| request.clone());
                    let deadline = request.deadline;
                    let result = match worker.call(|r| WorkerMsg::Generate { request, reply: r }, Some(wait)).await {
                        Ok(ractor::rpc::CallResult::Success(Ok(g))) => Ok(Generation { worker: name.clone(), ..g }),
                        Ok(ractor::rpc::CallResult::Success(Err(e))) => Err(ScheduleError::Backend(e)),
                        Ok(ractor::rpc::CallResult::Timeout) => Err(ScheduleError::Timeout),
                        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                            Err(ScheduleError::Backend(BackendError::WorkerGone))
                        }
                    };
                    let _ = myself.cast(SchedulerMsg::Done {
                        name: name.clone(),
                        worker: worker_id,
                        elapsed: started.elapsed(),
                    });
                    let worker_died = matches!(
                        result,
                        Err(ScheduleError::Backend(BackendError::WorkerGone | BackendError::Unreachable(_)))
                    );
                    match retry_copy {
                        // Once, and only while the deadline leaves room for a sibling to answer.
                        Some(request)
                            if worker_died
                                && deadline.saturating_duration_since(Instant::now()) >= redispatch_min_left =>
                        {
                            tracing::warn!(worker = %name, "worker failed mid-challenge; re-dispatching to a sibling");
                            let avoid = Some(name);
                            match myself.call(|r| SchedulerMsg::Submit { request, reply: r, avoid }, None).await {
                                // No sibling could take it: the first worker's failure is the real story.
                                Ok(ractor::rpc::CallResult::Success(Err(
                                    ScheduleError::Busy { .. } | ScheduleError::NoWorker,
                                ))) => {
                                    let _ = reply.send(result);
                                }
                                Ok(ractor::rpc::CallResult::Success(second)) => {
                                    let _ = reply.send(second);
                                }
                                _ => {
                                    let _ = reply.send(result);
                                }
                            }
                        }
                        _ => {
                            let _ = reply.send(result);
                        }
                    }
                });
            }
            SchedulerMsg::WorkerUp { name, actor, parallel } => {
                tracing::info!(worker = %name, parallel, "worker joined the schedule");
                state.workers.insert(name, Slot { actor, parallel: parallel.max(1), queued: 0, avg_secs: 0.0 });
                state.metrics.workers_ready.set(state.workers.len() as i64);
            }
            SchedulerMsg::WorkerDown { name } => {
                if let Some(slot) = state.workers.remove(&name) {
                    // Its in-flight work fails on its own (the reply ports drop); release the slots now.
                    state.in_flight = state.in_flight.saturating_sub(slot.queued);
                    tracing::warn!(worker = %name, lost = slot.queued, "worker left the schedule");
                }
                state.metrics.workers_ready.set(state.workers.len() as i64);
                state.metrics.in_flight.set(state.in_flight as i64);
            }
            SchedulerMsg::Done { name, worker, elapsed } => {
                // A worker that went down already released its slots, and a restarted one under the
                // same name starts from zero: only the instance that took the job frees it.
                if let Some(slot) = state.workers.get_mut(&name).filter(|s| s.actor.get_id() == worker) {
                    slot.queued = slot.queued.saturating_sub(1);
                    let secs = elapsed.as_secs_f64();
                    slot.avg_secs = if slot.avg_secs == 0.0 { secs } else { 0.8 * slot.avg_secs + 0.2 * secs };
                    state.in_flight = state.in_flight.saturating_sub(1);
                    state.metrics.in_flight.set(state.in_flight as i64);
                }
            }
            SchedulerMsg::SetAdmission(open) => state.admission_open = open,
            SchedulerMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
        }
        let now = state.status();
        state.published.send_if_modified(|s| std::mem::replace(s, now.clone()) != now);
        Ok(())
    }
}
