//! Where an embedded engine runs: on a thread of the node, or in a child process of its own.
//!
//! llama.cpp ends the whole process on a CUDA error (out of memory, a driver fault, any
//! `GGML_ABORT`), and nothing in process can catch that. A GPU engine therefore runs in a child
//! process (the node's own binary, [`child::CHILD_SUBCOMMAND`]) that sees only its GPU: its death
//! costs one worker, which its supervisor restarts, never the node. CPU engines may stay on a
//! thread, where nothing is copied between processes.
//!
//! - `batching.rs`: the continuous-batching loop, the same in both places.
//! - `thread.rs`: an engine on a thread of the node.
//! - `process.rs`: the worker's side of a child (start, feed, read, reap, report a death).
//! - `child.rs`: the child process's side.
//! - `frame.rs`: the length-prefixed JSON frames between a worker and its child.
//! - `stats.rs`: what a host reports to its worker (counters, step times, live engines).
//!
//! A host knows nothing of its worker's mailbox: it reports an engine's unexpected end through
//! the [`OnExit`] callback the worker hands it.

pub mod batching;
pub mod child;
pub mod frame;
pub mod process;
pub mod stats;
pub mod thread;

/// Called once, with the reason, when an engine ends without being asked to (a panic on its
/// thread, a child's death); never on a clean stop.
pub type OnExit = Box<dyn FnOnce(String) + Send + 'static>;
