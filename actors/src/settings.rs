//! Every settings type the node configures the engine with, in one place: the node's `Config`
//! nests these (declared once, beside the code they steer), and the node reaches the engine's
//! settings through this module alone, without knowing which room of the engine reads each.
//! Beside the types: the operator's hotkey (and the SS58 check of a configured one), the GPUs a
//! worker may name, and the restart policy's history (the node's managed servers restart under
//! the same policy as the engine's actors).

pub use crate::chain::{network_url, ChainSettings};
pub use crate::front_door::rate_limit::{PerMinute, RateLimitSettings};
pub use crate::front_door::DoorSettings;
pub use crate::graph::GraphConfig;
pub use crate::inference::embedded::{gpu_devices, EmbeddedSpec, CPU_DEFAULT_PARALLEL, DEFAULT_STALL_AFTER};
pub use crate::inference::openai::{with_v1, OpenAiSpec};
pub use crate::protocol::secret::Secret;
pub use crate::protocol::signature::{ss58_decode, Hotkey};
pub use crate::rsa_pool::DEFAULT_RSA_SLOTS;
pub use crate::scheduler::admission::{AdmissionSettings, DEFAULT_KEEP_SAMPLE_EVERY, DEFAULT_MAX_WAIT};
pub use crate::scheduler::hedging::HedgeSettings;
pub use crate::scheduler::SchedulerSettings;
pub use crate::session::SessionSettings;
pub use crate::supervision::{Decision, RestartHistory, RestartPolicy};
pub use crate::workers::spec::{Device, EngineProcess, EngineSpec, WorkerSpec};
