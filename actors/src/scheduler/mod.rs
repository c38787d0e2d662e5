//! The scheduler: admits challenges and routes each to a ready backend worker.
//!
//! Admission is bounded (`MAX_CONCURRENT_REQUESTS` in flight across the node, and a per-worker
//! queue bound) and knows time ([`admission`]): a challenge that no worker can start in
//! time to answer usefully before its deadline is refused at once with a retry hint, never parked
//! until it comes back empty. Among ready workers it picks the one expected to have a useful
//! answer first. A challenge whose first token is late is hedged on an idle sibling
//! ([`hedging`]). One whose worker dies is run once more, from its prompt, when its
//! deadline leaves room ([`Rerun`]): on a sibling with room, else on the same worker once its
//! supervisor has it back with a fresh engine (a child process is back in seconds), so that a lone
//! worker's crash costs its challenges time, not answers. The supervisor tells it which workers
//! are up (again, after this actor was restarted: the graph's root restarts it with fresh state
//! if it crashes, see [`crate::graph`]). Its status is published on a `watch` channel after every message, so `/availability`
//! and the front door's readiness check read it without a mailbox round trip.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

pub mod admission;
pub mod dispatch;
pub mod error;
pub mod hedging;

pub use error::ScheduleError;

use crate::inference::request::{BackendError, Generation, GenerationRequest};
use crate::metrics::Metrics;
use crate::workers::supervisor::WorkerEvent;
use crate::workers::worker::WorkerMsg;
use admission::{AdmissionSettings, JobPlan, Pace, PaceSample};
use dispatch::{Dispatch, NoPick, Slot};
use hedging::{Attempt, HedgeSettings, RecentTtft};

pub enum SchedulerMsg {
    Submit {
        request: GenerationRequest,
        reply: RpcReplyPort<Result<Generation, ScheduleError>>,
        /// Set when running the challenge once more after its worker died.
        rerun: Option<Rerun>,
        /// The validator that sent it (none for the operator's own requests): a validator long
        /// without an answer has its next challenge taken past the wait cap.
        validator: Option<String>,
    },
    /// A validator's challenge was answered (see [`AdmissionSettings::keep_sample_every`]).
    Answered {
        validator: String,
    },
    WorkerUp {
        name: String,
        actor: ActorRef<WorkerMsg>,
        parallel: usize,
    },
    WorkerDown {
        name: String,
    },
    /// The worker is being removed (a reload): no new challenges; it finishes what it holds, and
    /// leaves the schedule when done (or at `WorkerDown`).
    Retire {
        name: String,
    },
    /// A challenge's first token is late: start `request` (a fresh attempt of it) on a worker
    /// other than `first` that has a free sequence, if there is one.
    Hedge {
        first: String,
        request: GenerationRequest,
        reply: RpcReplyPort<Option<Dispatch>>,
    },
    /// A dispatched generation ended (either way); frees its slot.
    Done {
        name: String,
        worker: ActorId,
        job: u64,
        elapsed: Duration,
        /// What the attempt measured of the worker's pace (`None` when it failed).
        pace: Option<PaceSample>,
    },
    SetAdmission(bool),
    Status(RpcReplyPort<SchedulerStatus>),
    /// Test hook: makes the scheduler panic, so the root's restart of it can be exercised.
    #[cfg(feature = "test-hooks")]
    CrashForTest,
}

/// The supervisor's announcements reach the scheduler as its own messages (the graph forwards them).
impl From<WorkerEvent> for SchedulerMsg {
    fn from(event: WorkerEvent) -> Self {
        match event {
            WorkerEvent::Up { name, actor, parallel } => SchedulerMsg::WorkerUp { name, actor, parallel },
            WorkerEvent::Down { name } => SchedulerMsg::WorkerDown { name },
            WorkerEvent::Retire { name } => SchedulerMsg::Retire { name },
        }
    }
}

/// A challenge whose worker died mid-way, submitted once more (never twice: a re-run that fails
/// is answered with its failure). It goes to a sibling with room if there is one, else to the
/// worker it died on once that is back under the same name; when its own engine died, it waits
/// for that (parked until its deadline) rather than be refused. It was admitted once, so neither
/// the in-flight cap nor the wait cap applies to it again.
#[derive(Debug, Clone)]
pub struct Rerun {
    /// The worker it died on.
    pub worker: String,
    /// The instance that died: a worker of that name that is not this one is the restarted one.
    /// (The re-run can reach the scheduler before the supervisor's `WorkerDown` does.)
    pub instance: ActorId,
    /// The worker's own engine died (`WorkerGone`): its supervisor has it back in seconds, which
    /// is worth waiting for. A remote server that stopped answering (`Unreachable`) is restarted,
    /// if at all, by someone else and usually in longer than a challenge has: only a sibling (or
    /// the worker, already back) takes that one.
    pub wait_for_restart: bool,
}

/// A re-run waiting for its worker to come back (see [`Rerun`]).
struct Parked {
    worker: String,
    request: GenerationRequest,
    reply: RpcReplyPort<Result<Generation, ScheduleError>>,
    validator: Option<String>,
}

/// What `/availability` and `/metrics` need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerStatus {
    pub ready_workers: usize,
    pub in_flight: usize,
    pub capacity: usize,
    /// Sequences of the ready workers: how many challenges can run at once.
    pub sequences: usize,
    pub admission_open: bool,
}

impl SchedulerStatus {
    /// Before the scheduler's first message: nothing is ready.
    pub fn starting() -> Self {
        Self { ready_workers: 0, in_flight: 0, capacity: 0, sequences: 0, admission_open: true }
    }

    /// Whether the miner can answer challenges at all, for `/availability`; `Err` carries the reason.
    ///
    /// Being at capacity is *not* a reason. The validator (1.2.8) drops a miner that says `false`
    /// from selection until its next poll and zeroes its weight after 3 h without `true`, while a
    /// challenge refused with 503 adds no sample and costs nothing (SCORING.md). A busy moment must
    /// therefore cost at most the challenges that arrive during it, never a whole poll interval.
    pub fn availability(&self) -> Result<(), &'static str> {
        if !self.admission_open {
            Err("admission closed")
        } else if self.ready_workers == 0 {
            Err("no backend worker is ready")
        } else {
            Ok(())
        }
    }

    /// Every challenge slot is taken: the next challenge gets a 503 (for `/metrics` and the tests;
    /// not an `/availability` reason, see [`SchedulerStatus::availability`]).
    pub fn at_capacity(&self) -> bool {
        self.in_flight >= self.capacity
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
    /// A challenge whose worker died is run once more only with this much time left.
    pub redispatch_min_left: Duration,
    pub admission: AdmissionSettings,
    pub hedge: HedgeSettings,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 10,
            max_queue_per_worker: 10,
            deadline_slack: Duration::from_secs(5),
            redispatch_min_left: Duration::from_secs(5),
            admission: AdmissionSettings::default(),
            hedge: HedgeSettings::default(),
        }
    }
}

pub struct Scheduler;

pub struct SchedulerState {
    settings: SchedulerSettings,
    metrics: Arc<Metrics>,
    workers: BTreeMap<String, Slot>,
    in_flight: usize,
    admission_open: bool,
    published: watch::Sender<SchedulerStatus>,
    next_job: u64,
    recent_ttft: RecentTtft,
    /// When each validator last had a challenge answered (bounded: entries older than the
    /// keep-sample period say no more than an absent one, and are dropped).
    last_answered: HashMap<String, Instant>,
    /// Re-runs waiting for their worker to come back; dropped at their deadline (bounded by the
    /// challenges that were in flight).
    parked: Vec<Parked>,
}

impl SchedulerState {
    fn status(&self) -> SchedulerStatus {
        SchedulerStatus {
            ready_workers: self.workers.values().filter(|s| !s.retiring).count(),
            in_flight: self.in_flight,
            capacity: self.settings.max_in_flight,
            sequences: self.workers.values().filter(|s| !s.retiring).map(|s| s.parallel).sum(),
            admission_open: self.admission_open,
        }
    }

    /// Whether `validator` has gone [`AdmissionSettings::keep_sample_every`] without an answer
    /// (or has had none since the miner started): its challenge is taken past the wait cap.
    fn owed_a_sample(&self, validator: Option<&str>, now: Instant) -> bool {
        let every = self.settings.admission.keep_sample_every;
        validator
            .is_some_and(|v| self.last_answered.get(v).is_none_or(|at| now.saturating_duration_since(*at) >= every))
    }

    /// Places a job for `request` on worker `name`.
    fn place(&mut self, name: &str, request: &GenerationRequest, now: Instant) -> Dispatch {
        let job = self.next_job;
        self.next_job += 1;
        let slot = self.workers.get_mut(name).expect("placed on a ready worker");
        let started_free = slot.queued() < slot.parallel;
        let batch = if started_free { slot.queued() + 1 } else { slot.parallel };
        slot.jobs.insert(job, JobPlan { placed: now, max_tokens: request.max_tokens, deadline: request.deadline });
        self.in_flight += 1;
        self.metrics.in_flight.set(self.in_flight as i64);
        Dispatch { name: name.to_string(), actor: slot.actor.clone(), job, started_free, batch }
    }

    /// Places `request` on worker `name` and runs it there in a task of its own, which answers
    /// `reply`. A first attempt whose worker dies is submitted once more as a [`Rerun`] when its
    /// deadline leaves [`SchedulerSettings::redispatch_min_left`]; a re-run is not.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        name: &str,
        request: GenerationRequest,
        reply: RpcReplyPort<Result<Generation, ScheduleError>>,
        validator: Option<String>,
        first_attempt: bool,
        now: Instant,
    ) {
        let dispatch = self.place(name, &request, now);
        let hedge_after =
            if self.workers.len() > 1 { self.recent_ttft.hedge_after(&self.settings.hedge) } else { None };
        let run = Run {
            scheduler: myself.clone(),
            metrics: self.metrics.clone(),
            deadline_slack: self.settings.deadline_slack,
        };
        let redispatch_min_left = self.settings.redispatch_min_left;
        tokio::spawn(async move {
            let deadline = request.deadline;
            let retry_copy = first_attempt.then(|| request.new_attempt());
            let first = run.launch(dispatch.clone(), request.clone());
            let result = match hedge_after {
                Some(after) => run.hedged(first, &dispatch.name, &request, after).await,
                None => hedging::single(first).await,
            };
            if let (Some(v), Ok(gen)) = (&validator, &result) {
                if gen.completion_tokens > 0 {
                    let _ = run.scheduler.cast(SchedulerMsg::Answered { validator: v.clone() });
                }
            }
            let worker_died =
                matches!(result, Err(ScheduleError::Backend(BackendError::WorkerGone | BackendError::Unreachable(_))));
            let wait_for_restart = matches!(result, Err(ScheduleError::Backend(BackendError::WorkerGone)));
            let left = deadline.saturating_duration_since(Instant::now());
            let request = match retry_copy {
                Some(request) if worker_died && left >= redispatch_min_left => request,
                _ => {
                    let _ = reply.send(result);
                    return;
                }
            };
            tracing::warn!(worker = %dispatch.name, left_ms = left.as_millis() as u64, "worker failed mid-challenge; running it once more");
            let rerun = Some(Rerun { worker: dispatch.name, instance: dispatch.actor.get_id(), wait_for_restart });
            let submit = |r| SchedulerMsg::Submit { request, reply: r, rerun, validator };
            // The re-run answers by its deadline (its attempt is bounded so); past that, or if
            // nothing could take it, the worker's failure is the real story.
            let bound = left + 2 * run.deadline_slack;
            match run.scheduler.call(submit, Some(bound)).await {
                Ok(ractor::rpc::CallResult::Success(second))
                    if !second.as_ref().is_err_and(ScheduleError::is_refusal) =>
                {
                    let _ = reply.send(second);
                }
                _ => {
                    let _ = reply.send(result);
                }
            }
        });
    }

    /// Runs a challenge once more after its worker died (see [`Rerun`]): on a sibling with room,
    /// else on its worker if that is back already, else parked until it is.
    fn rerun(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        rerun: Rerun,
        request: GenerationRequest,
        reply: RpcReplyPort<Result<Generation, ScheduleError>>,
        validator: Option<String>,
        now: Instant,
    ) {
        let sibling = dispatch::pick(
            &self.workers,
            &self.settings.admission,
            self.settings.max_queue_per_worker,
            &request,
            Some(&rerun.worker),
            true,
            now,
        )
        .ok();
        let back = self
            .workers
            .get(&rerun.worker)
            .is_some_and(|s| !s.retiring && s.actor.get_id() != rerun.instance)
            .then(|| rerun.worker.clone());
        match sibling.or(back) {
            Some(name) => {
                let on = if name == rerun.worker { "restarted" } else { "sibling" };
                tracing::info!(worker = %name, died_on = %rerun.worker, "re-running a challenge on {on} worker");
                self.metrics.reruns.with_label_values(&[on]).inc();
                self.dispatch(myself, &name, request, reply, validator, false, now);
            }
            None if rerun.wait_for_restart => {
                tracing::info!(worker = %rerun.worker, "no sibling has room; the challenge waits for its worker to come back");
                self.parked.push(Parked { worker: rerun.worker, request, reply, validator });
            }
            None => {
                let _ = reply.send(Err(ScheduleError::NoWorker));
            }
        }
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
            next_job: 0,
            recent_ttft: RecentTtft::default(),
            last_answered: HashMap::new(),
            parked: Vec::new(),
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
            SchedulerMsg::Submit { request, reply, rerun, validator } => {
                if !state.admission_open {
                    let _ = reply.send(Err(ScheduleError::Closed));
                    return Ok(());
                }
                let now = Instant::now();
                if let Some(rerun) = rerun {
                    state.rerun(&myself, rerun, request, reply, validator, now);
                } else {
                    if state.workers.is_empty() {
                        let _ = reply.send(Err(ScheduleError::NoWorker));
                        return Ok(());
                    }
                    let pick = if state.in_flight < state.settings.max_in_flight {
                        let owed = state.owed_a_sample(validator.as_deref(), now);
                        dispatch::pick(
                            &state.workers,
                            &state.settings.admission,
                            state.settings.max_queue_per_worker,
                            &request,
                            None,
                            owed,
                            now,
                        )
                    } else {
                        Err(NoPick::Full)
                    };
                    let name = match pick {
                        Ok(name) => name,
                        Err(NoPick::Full) => {
                            state.metrics.admission_refusals.with_label_values(&["full"]).inc();
                            let err = ScheduleError::Busy {
                                in_flight: state.in_flight,
                                retry_after_secs: state.retry_after_secs(),
                            };
                            let _ = reply.send(Err(err));
                            return Ok(());
                        }
                        Err(NoPick::WaitTooLong { wait, slowdown, free_in }) => {
                            let reason = if slowdown { "slowdown" } else { "wait" };
                            state.metrics.admission_refusals.with_label_values(&[reason]).inc();
                            let retry_after_secs = free_in.as_secs_f64().ceil().clamp(1.0, 30.0) as u64;
                            let wait_ms = wait.as_millis().min(u128::from(u64::MAX)) as u64;
                            let _ = reply.send(Err(ScheduleError::WaitTooLong { wait_ms, retry_after_secs }));
                            return Ok(());
                        }
                        Err(NoPick::TooLate(free_in)) => {
                            state.metrics.admission_refusals.with_label_values(&["too_late"]).inc();
                            let retry_after_secs = free_in.as_secs_f64().ceil().clamp(1.0, 30.0) as u64;
                            let _ = reply.send(Err(ScheduleError::TooLate { retry_after_secs }));
                            return Ok(());
                        }
                    };
                    state.dispatch(&myself, &name, request, reply, validator, true, now);
                }
            }
            SchedulerMsg::Hedge { first, request, reply } => {
                let now = Instant::now();
                // Only onto a free sequence: a hedge must never wait, nor delay other work.
                let idle = state
                    .workers
                    .iter()
                    .filter(|(name, s)| **name != first && s.queued() < s.parallel)
                    .min_by_key(|(_, s)| (s.pace.ttft_secs().map(|t| (t * 1e6) as u64), s.queued()))
                    .map(|(name, _)| name.clone());
                let dispatch = match idle {
                    Some(name) if state.admission_open && state.in_flight < state.settings.max_in_flight => {
                        Some(state.place(&name, &request, now))
                    }
                    _ => None,
                };
                let _ = reply.send(dispatch);
            }
            SchedulerMsg::WorkerUp { name, actor, .. }
                if state.workers.get(&name).is_some_and(|s| s.actor.get_id() == actor.get_id()) =>
            {
                // Told twice (the supervisor re-announces its workers to a restarted scheduler,
                // and a worker that just started may have announced itself already).
            }
            SchedulerMsg::WorkerUp { name, actor, parallel } => {
                tracing::info!(worker = %name, parallel, "worker joined the schedule");
                let slot = Slot {
                    actor,
                    parallel: parallel.max(1),
                    jobs: BTreeMap::new(),
                    avg_secs: 0.0,
                    pace: Pace::default(),
                    retiring: false,
                };
                if let Some(old) = state.workers.insert(name.clone(), slot) {
                    // A new instance under the same name: the old one's jobs are gone with it.
                    state.in_flight = state.in_flight.saturating_sub(old.queued());
                    state.metrics.in_flight.set(state.in_flight as i64);
                }
                state.metrics.workers_ready.set(state.workers.len() as i64);
                // Re-runs waiting for this worker go first, ahead of any new challenge.
                let now = Instant::now();
                let (back, waiting) = std::mem::take(&mut state.parked).into_iter().partition(|p| p.worker == name);
                state.parked = waiting;
                for Parked { request, reply, validator, .. } in back {
                    if request.deadline > now && !reply.is_closed() {
                        tracing::info!(worker = %name, "re-running a challenge on its restarted worker");
                        state.metrics.reruns.with_label_values(&["restarted"]).inc();
                        state.dispatch(&myself, &name, request, reply, validator, false, now);
                    }
                }
            }
            SchedulerMsg::WorkerDown { name } => {
                if let Some(slot) = state.workers.remove(&name) {
                    // Its in-flight work fails on its own (the reply ports drop); release the slots now.
                    state.in_flight = state.in_flight.saturating_sub(slot.queued());
                    tracing::warn!(worker = %name, lost = slot.queued(), "worker left the schedule");
                }
                state.metrics.workers_ready.set(state.workers.len() as i64);
                state.metrics.in_flight.set(state.in_flight as i64);
            }
            SchedulerMsg::Retire { name } => {
                if let Some(slot) = state.workers.get_mut(&name) {
                    slot.retiring = true;
                    if slot.jobs.is_empty() {
                        state.workers.remove(&name);
                    }
                    tracing::info!(worker = %name, "worker retiring: no new challenges");
                }
                state.metrics.workers_ready.set(state.workers.values().filter(|s| !s.retiring).count() as i64);
            }
            SchedulerMsg::Done { name, worker, job, elapsed, pace } => {
                // A worker that went down already released its slots, and a restarted one under the
                // same name starts from zero: only the instance that took the job frees it.
                if let Some(slot) = state.workers.get_mut(&name).filter(|s| s.actor.get_id() == worker) {
                    if slot.jobs.remove(&job).is_some() {
                        let secs = elapsed.as_secs_f64();
                        slot.avg_secs = if slot.avg_secs == 0.0 { secs } else { 0.8 * slot.avg_secs + 0.2 * secs };
                        state.in_flight = state.in_flight.saturating_sub(1);
                        state.metrics.in_flight.set(state.in_flight as i64);
                    }
                    if let Some(sample) = pace {
                        slot.pace.record(sample);
                        if let Some(ttft) = sample.ttft {
                            state.recent_ttft.push(ttft);
                        }
                    }
                    if slot.retiring && slot.jobs.is_empty() {
                        state.workers.remove(&name);
                    }
                }
            }
            SchedulerMsg::Answered { validator } => {
                let now = Instant::now();
                let every = state.settings.admission.keep_sample_every;
                // Bounded by the validators that get answers; stale entries mean what absence does.
                if state.last_answered.len() >= 1024 {
                    state.last_answered.retain(|_, at| now.saturating_duration_since(*at) < every);
                }
                state.last_answered.insert(validator, now);
            }
            SchedulerMsg::SetAdmission(open) => state.admission_open = open,
            SchedulerMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            #[cfg(feature = "test-hooks")]
            SchedulerMsg::CrashForTest => panic!("scheduler: crash requested by a test"),
        }
        // A parked re-run whose deadline passed (or whose caller gave up) is answered by its
        // first failure: dropping its port tells the task holding that.
        let at = Instant::now();
        state.parked.retain(|p| p.request.deadline > at && !p.reply.is_closed());
        let now = state.status();
        state.published.send_if_modified(|s| std::mem::replace(s, now.clone()) != now);
        Ok(())
    }
}

/// What a challenge's dispatching task needs to run its attempts.
struct Run {
    scheduler: ActorRef<SchedulerMsg>,
    metrics: Arc<Metrics>,
    deadline_slack: Duration,
}

impl Run {
    /// Runs one attempt on its worker in a task of its own, which frees the worker's slot (and
    /// reports what it measured) when the attempt ends, whether or not anyone still awaits it.
    fn launch(&self, dispatch: Dispatch, request: GenerationRequest) -> Attempt {
        let control = request.control.clone();
        let scheduler = self.scheduler.clone();
        let wait = request.deadline.saturating_duration_since(Instant::now()) + self.deadline_slack;
        let handle = tokio::spawn(async move {
            let Dispatch { name, actor, job, started_free, batch } = dispatch;
            let worker = actor.get_id();
            let dispatched = Instant::now();
            let result = match actor.call(|r| WorkerMsg::Generate { request, reply: r }, Some(wait)).await {
                Ok(ractor::rpc::CallResult::Success(Ok(g))) => Ok(Generation { worker: name.clone(), ..g }),
                Ok(ractor::rpc::CallResult::Success(Err(e))) => Err(ScheduleError::Backend(e)),
                Ok(ractor::rpc::CallResult::Timeout) => Err(ScheduleError::Timeout),
                Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                    Err(ScheduleError::Backend(BackendError::WorkerGone))
                }
            };
            let pace = result.as_ref().ok().map(|g| PaceSample::of(g, dispatched, started_free).in_batch(batch));
            let _ = scheduler.cast(SchedulerMsg::Done { name, worker, job, elapsed: dispatched.elapsed(), pace });
            result
        });
        Attempt { control, handle }
    }

    /// Awaits `first`; if it has no token after `after`, asks the scheduler for an idle sibling
    /// and races a fresh attempt there. With no sibling idle, it asks again every `after` while
    /// the first attempt still has no token.
    async fn hedged(
        &self,
        mut first: Attempt,
        first_worker: &str,
        request: &GenerationRequest,
        after: Duration,
    ) -> Result<Generation, ScheduleError> {
        let control = first.control.clone();
        let (dispatch, second) = loop {
            let ended = tokio::select! {
                biased;
                () = control.wait_first_token() => None,
                ended = &mut first.handle => Some(ended),
                () = tokio::time::sleep(after) => None,
            };
            if let Some(ended) = ended {
                return ended.unwrap_or(Err(ScheduleError::Backend(BackendError::WorkerGone)));
            }
            if control.has_first_token() {
                return hedging::single(first).await;
            }
            let second = request.new_attempt();
            let first_name = first_worker.to_string();
            let asked = self
                .scheduler
                .call(|r| SchedulerMsg::Hedge { first: first_name, request: second.clone(), reply: r }, None)
                .await;
            match asked {
                Ok(ractor::rpc::CallResult::Success(Some(dispatch))) => break (dispatch, second),
                Ok(ractor::rpc::CallResult::Success(None)) => continue,
                // The scheduler is gone: no hedge, the first attempt is all there is.
                _ => return hedging::single(first).await,
            }
        };
        tracing::debug!(first = %first_worker, hedge = %dispatch.name, after_ms = after.as_millis() as u64, "first token late; hedging");
        self.metrics.hedges.inc();
        let hedge = self.launch(dispatch, second);
        hedging::race(first, hedge, &self.metrics).await
    }
}
