//! The miner's clients: what speaks to a miner from the outside, as a validator or as its operator
//! does. They use the wire protocol and the operator's port, never the engine's insides.
//!
//! - `validator.rs`: the validator's side of the protocol (key exchange, challenges), for
//!   `probe`, the benchmarks and the tests.
//! - `probe.rs`: `loosh-miner probe`, one validator's round trip against a running miner.
//! - `ops.rs`: a small HTTP client for the operator's `/health` and `/metrics`.
//! - `status.rs`: `loosh-miner status`, what those say, for a person.

pub mod ops;
pub mod probe;
pub mod status;
pub mod validator;
