//! Where an embedded engine runs: on a thread of the node, or in a child process of its own.
//!
//! llama.cpp ends the whole process on a CUDA error (out of memory, a driver fault, any
//! `GGML_ABORT`), and nothing in process can catch that. A GPU engine therefore runs in a child
//! process (the node's own binary, [`child::CHILD_SUBCOMMAND`]) that sees only its GPU: its death
//! costs one worker, which its supervisor restarts, never the node. CPU engines may stay on a
//! thread, where nothing is copied between processes.
//!
//! - `batching.rs`: the continuous-batching loop, the same in both places.
//! - `frame.rs`: the length-prefixed JSON frames between a worker and its child.
//! - `child.rs`: the child process's side.
//! - `process.rs`: the worker's side of a child (start, feed, read, reap, report a death).

pub mod batching;
pub mod child;
pub mod frame;
pub mod process;

use std::path::PathBuf;

/// Where a worker's embedded engine runs (`ENGINE_PROCESS`, or a worker's `"process"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EngineProcess {
    /// On a thread of the node: its crash is the node's.
    #[default]
    Thread,
    /// In a child process running `exe` (`None`: this executable). Tests that start the graph
    /// inside a test binary name the node's binary here.
    Child { exe: Option<PathBuf> },
}
