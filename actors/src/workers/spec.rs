//! What a worker is: its name, its device, its engine (llama.cpp in process or an OpenAI-compatible
//! server) and where an embedded engine runs. Plain data, built by the node's configuration and
//! compared on a reload: an equal spec keeps its worker running.

use std::path::PathBuf;

use crate::inference::embedded::EmbeddedSpec;
use crate::inference::openai::OpenAiSpec;

/// Which device a worker is bound to, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Gpu(i) => write!(f, "gpu{i}"),
        }
    }
}

/// Which engine a worker runs.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineSpec {
    /// llama.cpp in process, on this worker's device.
    Embedded(EmbeddedSpec),
    /// An OpenAI-compatible server, local or remote.
    OpenAi(OpenAiSpec),
}

/// Everything a worker needs to (re)start. Equal specs make the same worker: a reload keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    /// Stable name ("cpu0", "gpu1", "vllm0"): the label in logs and metrics across restarts.
    pub name: String,
    pub device: Device,
    pub engine: EngineSpec,
    /// Where an embedded engine runs (ignored for OpenAI-compatible servers).
    pub process: EngineProcess,
}

impl WorkerSpec {
    /// Challenges this worker generates at once.
    pub fn parallel(&self) -> usize {
        match &self.engine {
            EngineSpec::Embedded(e) => e.n_parallel.max(1) as usize,
            EngineSpec::OpenAi(o) => o.n_parallel.max(1) as usize,
        }
    }
}

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
