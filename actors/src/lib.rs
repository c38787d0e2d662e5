//! The loosh-miner engine: the actor graph and the work it runs.
//!
//! The node holds one thing of it, the [`front_door::FrontDoor`], and configures it with the types
//! in [`settings`]; `/metrics` renders [`metrics`]. The operator's checks (registration, `post-ip`,
//! `doctor`) take the chain and backend clients from the front door too. Everything else is the
//! engine's own; the benchmarks (`loosh-bench`) name each step they take past the door.
//!
//! One challenge, file by file:
//! 1. `front_door/challenge.rs` — [`front_door::FrontDoor::answer_challenge`]: authorization
//!    (`authorization.rs`), readiness (the scheduler's published status), the validator's key read
//!    from `session/live_keys.rs`, Fernet decrypt (`protocol/fernet_codec.rs`, a function call), the
//!    challenge JSON (`protocol/messages.rs`).
//! 2. `scheduler/` — admission (capacity and time, `admission.rs`, decided once, with a
//!    `Retry-After` hint) and the pick of a worker (`dispatch.rs`): mailbox hop 1; a late first
//!    token is raced on an idle sibling (`hedging.rs`).
//! 3. `workers/worker.rs` — one engine per device, under `workers/supervisor.rs`: hop 2; the work
//!    itself is in `inference/` (chat template, llama.cpp or an OpenAI-compatible server, tool calls),
//!    and `workers/host/` runs an embedded engine on a thread or in a child process of its own.
//! 4. back in `front_door/challenge.rs` — the reply JSON with the timing echo, Fernet encrypt.
//!
//! A key exchange: `front_door/key_exchange.rs` — shape, authorization, timestamp, sr25519
//! (`protocol/signature.rs`), the nonce spent in the validator's `session/key_session.rs`, RSA on
//! `rsa_pool.rs`, the key stored by the session into `session/live_keys.rs`, the address it came
//! from into `session/known_peers.rs`.
//!
//! `graph.rs` spawns the actors under one root, which restarts what crashes under
//! `supervision.rs`'s policy (and stops the node when a restart cannot help); `chain/` keeps the
//! allowed validator set current through `validator_set.rs`, which drops the keys, metrics and
//! proven addresses of a validator no longer allowed.

pub mod authorization;
pub mod bounded_body;
pub mod chain;
pub mod front_door;
pub mod graph;
pub mod inference;
pub mod metrics;
pub mod protocol;
pub mod rsa_pool;
pub mod scheduler;
pub mod session;
pub mod settings;
pub mod supervision;
pub mod validator_set;
pub mod workers;
