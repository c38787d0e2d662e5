//! The continuous-batching loop around an [`EmbeddedEngine`], shared by both places an engine
//! runs: a thread of the node, or a child process. Only what happens around a step differs (where
//! counters and answers go, what a test hook does), so that is the [`Host`]'s part.

use std::collections::VecDeque;
use std::sync::mpsc;

use crate::inference::embedded::{EmbeddedEngine, StepStats};
use crate::inference::request::{BackendError, Generation, GenerationRequest};

/// One challenge for the engine, and where its answer goes (`R`: a reply port in process, a job
/// id in a child).
pub struct Job<R> {
    pub request: GenerationRequest,
    pub reply: R,
}

/// What the loop tells the place it runs in.
pub trait Host<R> {
    /// A round (admission with its prefill, then one decode step) begins with work in flight.
    fn round_starting(&mut self);
    /// Admission is done: `active` sequences take this step.
    fn admitted(&mut self, active: usize);
    /// The step is done, before its `finished` answers go out: whoever holds an answer then sees
    /// its tokens counted. `idle`: nothing is active or waiting.
    fn stepped(&mut self, stats: StepStats, active: usize, idle: bool, finished: usize);
    fn answer(&mut self, reply: R, result: Result<Generation, BackendError>);
}

/// Serves `jobs` until the sender is gone and every admitted challenge has its answer.
pub fn serve<R>(engine: &mut EmbeddedEngine<'_, R>, jobs: &mpsc::Receiver<Job<R>>, host: &mut impl Host<R>) {
    let mut waiting: VecDeque<Job<R>> = VecDeque::new();
    let mut open = true;
    loop {
        // Idle: block for work. Busy: pick up whatever arrived without waiting.
        if engine.active() == 0 && waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => break,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        host.round_starting();
        while engine.has_free_slot() {
            let Some(job) = waiting.pop_front() else { break };
            if let Err((reply, e)) = engine.admit(job.request, job.reply) {
                host.answer(reply, Err(e));
            }
        }
        host.admitted(engine.active());
        let finished = engine.step();
        let idle = engine.active() == 0 && waiting.is_empty();
        host.stepped(engine.stats(), engine.active(), idle, finished.len());
        for (reply, result) in finished {
            host.answer(reply, result);
        }
        if !open && idle {
            break;
        }
    }
}
