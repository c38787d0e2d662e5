//! The workers: one backend worker per device (or OpenAI-compatible server), under a supervisor
//! that restarts what crashes and announces who is up.
//!
//! - `spec.rs`: what a worker is (plain data, from the node's configuration).
//! - `supervisor.rs`: starts, restarts, retires workers; announces them as [`supervisor::WorkerEvent`]s.
//! - `worker.rs`: one worker's actor: forwards jobs to its engine and watches it.
//! - `host/`: where an embedded engine runs (a thread or a child process) and the batching loop.
//!
//! Nothing here knows the scheduler: it sends jobs in ([`worker::WorkerMsg::Generate`]) and
//! listens to the supervisor's announcements.

pub mod host;
pub mod spec;
pub mod supervisor;
pub mod worker;
