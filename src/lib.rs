//! loosh-miner, the node: configuration, the operator's hotkey, the HTTP surface and the wiring
//! that connects them to the actor graph in the `loosh-actors` crate.
//!
//! A request's path: `http::challenge` (route, headers, body limits) → the engine's front door
//! (`loosh_actors::front_door`: live key, Fernet, admission) → scheduler → backend worker → back
//! out through the front door, with each refusal mapped to HTTP in `http::error`. `node` spawns it
//! all; `client::validator` speaks the protocol from the validator's side for `probe`, the
//! benchmarks (the `loosh-bench` crate, which starts a node through this library) and the tests.

pub mod client;
pub mod config;
pub mod doctor;
pub mod http;
pub mod logging;
pub mod managed_server;
pub mod node;
pub mod process_metrics;
pub mod registration;
pub mod wallet;
