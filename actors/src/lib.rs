//! The loosh-miner actor graph and the work it runs.
//!
//! A challenge's path, by module:
//! `session` (is the validator's key live?) → `challenge_crypto` (Fernet decrypt) →
//! `scheduler` (admission, pick a worker) → `backend_worker` (one engine per device, under the
//! `worker_supervisor`) → `inference` (chat template, llama.cpp, tool calls) → back through
//! `challenge_crypto` (Fernet encrypt). `protocol` holds the wire formats and cryptography with no
//! actors in them; `graph` spawns it all; `metrics` is what `/metrics` shows.

pub mod authorization;
pub mod backend_worker;
pub mod chain;
pub mod challenge_crypto;
pub mod graph;
pub mod inference;
pub mod metrics;
pub mod protocol;
pub mod scheduler;
pub mod session;
pub mod worker_supervisor;
