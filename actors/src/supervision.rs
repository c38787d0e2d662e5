//! Supervision as data, shared by every supervisor in the node: the worker supervisor (one
//! backend worker per device), the graph's root (the scheduler, the key registry, the worker
//! supervisor, the chain actors) and the node's managed backend servers.
//!
//! Erlang/OTP's rule, written once: a failed child is restarted with fresh state after a backoff
//! that doubles per quick failure, unless it already failed [`RestartPolicy::max_restarts`] times
//! within [`RestartPolicy::within`]; then its supervisor gives up on it, and what giving up means
//! is the supervisor's stated choice ([`OnGiveUp`]): leave the child down (a worker is one device
//! among others) or stop the node so that the service manager starts it afresh (the scheduler or
//! the key registry down means the node answers nothing). Each supervisor keeps one
//! [`RestartHistory`] per child and asks it [`RestartHistory::on_failure`] what to do.
//!
//! A child handle that survives restarts is a [`Current`]: the supervisor swaps the actor inside,
//! and every clone held elsewhere reaches the new one.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::ActorRef;

/// Restart policy, as data: at most `max_restarts` within `within`, waiting `backoff_initial`
/// doubled per quick failure up to `backoff_max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub within: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    /// Ten restarts in ten minutes, waiting 1 s, 2 s, 4 s ... up to a minute: a remote server that
    /// takes a few minutes to reload its model is waited for; a child that crashes on every start
    /// is given up on after about five minutes.
    fn default() -> Self {
        Self::TEN_IN_TEN_MINUTES
    }
}

impl RestartPolicy {
    /// The default policy, usable in constants.
    pub const TEN_IN_TEN_MINUTES: RestartPolicy = RestartPolicy {
        max_restarts: 10,
        within: Duration::from_secs(600),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
    };

    /// The wait before the next start, given how many restarts happened in the window; `None`
    /// when the intensity limit is reached.
    pub fn next_backoff(&self, recent_restarts: usize) -> Option<Duration> {
        if recent_restarts >= self.max_restarts {
            return None;
        }
        Some(self.backoff(recent_restarts))
    }

    /// `backoff_initial` doubled `doublings` times, capped at `backoff_max`.
    fn backoff(&self, doublings: usize) -> Duration {
        let factor = u32::try_from(doublings).ok().and_then(|d| 1u32.checked_shl(d)).unwrap_or(u32::MAX);
        self.backoff_initial.saturating_mul(factor).min(self.backoff_max)
    }
}

/// What a supervisor does about one failure of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again, with fresh state, after this wait.
    Restart { after: Duration },
    /// It failed more often than the policy allows: the supervisor's [`OnGiveUp`] applies.
    GiveUp,
}

/// What a supervisor does with a child it gave up on: a choice written next to each supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnGiveUp {
    /// The child stays down and the node goes on without it (the logs and `/metrics` say so): a
    /// worker is one device, a managed server one backend, and the others still answer.
    LeaveDown,
    /// The node stops and the process exits non-zero, so that the service manager (systemd's
    /// `Restart=on-failure`) starts it afresh: without this child the node answers nothing.
    StopNode,
}

/// One child's recent failures, for the intensity limit and the backoff.
#[derive(Debug, Clone, Default)]
pub struct RestartHistory {
    /// Restarts inside the policy's window (older ones are dropped as they leave it).
    recent: VecDeque<Instant>,
    /// Failures since the child last ran longer than `backoff_max`: the backoff's exponent.
    quick_failures: usize,
    /// When the child last started, if its supervisor says ([`Self::started`]).
    started: Option<Instant>,
    /// Restarts over the child's whole life, for `/metrics` and the status.
    total: u64,
}

impl RestartHistory {
    /// The child (re)started at `now`: a child that then runs longer than the longest backoff
    /// before it fails starts its backoff over at `backoff_initial`.
    pub fn started(&mut self, now: Instant) {
        self.started = Some(now);
    }

    /// The child failed at `now`: restart it (the restart is counted) or give up on it.
    pub fn on_failure(&mut self, policy: &RestartPolicy, now: Instant) -> Decision {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > policy.within) {
            self.recent.pop_front();
        }
        if self.recent.len() >= policy.max_restarts {
            return Decision::GiveUp;
        }
        if self.started.take().is_some_and(|s| now.duration_since(s) > policy.backoff_max) {
            self.quick_failures = 0;
        }
        let after = policy.backoff(self.quick_failures);
        self.quick_failures += 1;
        self.recent.push_back(now);
        self.total += 1;
        Decision::Restart { after }
    }

    /// Restarts inside the window as of the last failure.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }

    /// Restarts over the child's life.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Where a restartable child is now: cheap to clone; the supervisor swaps the actor inside on a
/// restart and every clone reaches the new one. A read is a lock-free-in-practice `RwLock` read
/// (writes happen only on a restart).
pub struct Current<M: ractor::Message>(Arc<RwLock<ActorRef<M>>>);

impl<M: ractor::Message> Clone for Current<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: ractor::Message> Current<M> {
    pub fn new(actor: ActorRef<M>) -> Self {
        Self(Arc::new(RwLock::new(actor)))
    }

    /// The child as it is now (after a crash, its replacement once started).
    pub fn get(&self) -> ActorRef<M> {
        // A poisoned lock still holds a valid reference: a panic cannot interrupt the swap.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Points every clone at `actor` (the supervisor, on a restart).
    pub(crate) fn set(&self, actor: ActorRef<M>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_restarts: usize) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            within: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_then_the_intensity_limit_gives_up() {
        let p = policy(5);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        let waits: Vec<Decision> = (0..6).map(|i| h.on_failure(&p, t0 + Duration::from_millis(i))).collect();
        let secs = |s| Decision::Restart { after: Duration::from_secs(s) };
        assert_eq!(waits, vec![secs(1), secs(2), secs(4), secs(8), secs(8), Decision::GiveUp]);
        assert_eq!((h.recent(), h.total()), (5, 5), "a give-up is no restart");
    }

    #[test]
    fn failures_older_than_the_window_no_longer_count() {
        let p = policy(2);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        assert!(matches!(h.on_failure(&p, t0), Decision::Restart { .. }));
        assert!(matches!(h.on_failure(&p, t0), Decision::Restart { .. }));
        assert_eq!(h.on_failure(&p, t0 + Duration::from_secs(30)), Decision::GiveUp);
        assert!(matches!(h.on_failure(&p, t0 + Duration::from_secs(61)), Decision::Restart { .. }));
        assert_eq!(h.total(), 3);
    }

    #[test]
    fn a_child_that_ran_longer_than_the_longest_backoff_starts_its_backoff_over() {
        let p = policy(10);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        h.on_failure(&p, t0);
        h.started(t0 + Duration::from_secs(1));
        assert_eq!(h.on_failure(&p, t0 + Duration::from_secs(2)), Decision::Restart { after: Duration::from_secs(2) });
        h.started(t0 + Duration::from_secs(4));
        assert_eq!(h.on_failure(&p, t0 + Duration::from_secs(20)), Decision::Restart { after: Duration::from_secs(1) });
    }

    #[test]
    fn next_backoff_keeps_its_meaning_for_callers_that_count_themselves() {
        let p = policy(3);
        assert_eq!(p.next_backoff(0), Some(Duration::from_secs(1)));
        assert_eq!(p.next_backoff(2), Some(Duration::from_secs(4)));
        assert_eq!(p.next_backoff(3), None);
        assert_eq!(RestartPolicy { max_restarts: usize::MAX, ..p }.next_backoff(400), Some(Duration::from_secs(8)));
    }
}
