//! The command line: one subcommand per benchmark, each with the knobs it measures over.

use std::path::PathBuf;

use clap::Subcommand;

use crate::reference::{BenchDevice, DirectSampler};

#[derive(Subcommand)]
pub enum Benchmark {
    /// Round trips per second and latency of the protocol path (tiny model, one token).
    Protocol {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Challenges per concurrency level.
        #[arg(long, default_value_t = 400)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        threads: i32,
    },
    /// Throughput of 1, 2, 4 workers on one device on a fixed challenge mix.
    Workers {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
        workers: Vec<usize>,
        #[arg(long, default_value_t = 48)]
        challenges: usize,
        /// Challenges in flight at once.
        #[arg(long, visible_alias = "concurrency", default_value_t = 8)]
        inflight: usize,
        /// cpu or gpuN.
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        /// CPU threads per worker.
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Sequences each worker generates at once.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
    },
    /// One worker generating 1 vs N sequences at once (continuous batching gain), each level
    /// against llama.cpp's own batched decoding of as many sequences.
    Batching {
        #[arg(long)]
        model: PathBuf,
        /// The worker's n_parallel levels.
        #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
        parallel: Vec<u32>,
        #[arg(long, default_value_t = 48)]
        challenges: usize,
        /// Challenges in flight at once.
        #[arg(long, default_value_t = 16)]
        inflight: usize,
        /// Completion tokens per challenge, cycled over the challenges.
        #[arg(long, default_value = "16,64,128", value_delimiter = ',')]
        max_tokens: Vec<u32>,
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Skip llama.cpp's batched reference.
        #[arg(long)]
        no_reference: bool,
        /// Run the worker without prefix reuse (and so without the unified KV cache it needs).
        #[arg(long)]
        no_prefix_cache: bool,
        /// The challenges' temperature; 0 (greedy) shows the engine without the sampler's cost.
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
    },
    /// The openai worker's overhead: miner round trip minus a direct streamed call to the same
    /// llama-cpp-python server (started by the bench from ./.venv).
    Openai {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 30)]
        requests: usize,
        #[arg(long, default_value_t = 16)]
        max_tokens: u32,
    },
    /// Issue 9's attacks against a local miner (replayed key exchange, stalled bodies, malformed
    /// flood), each with an honest validator's p50/p99 during it against its p50/p99 alone; then
    /// issue 32's: a 300,000-string stop list (honest tokens/s during it against alone) and a
    /// hostile OpenAI-compatible backend (peak memory per misbehaviour); issues 29 and 30's:
    /// replay-many, relay and hog (the honest validator's answered count during each).
    Attack {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        /// Honest key exchange + challenge rounds per measurement.
        #[arg(long, default_value_t = 20)]
        honest: usize,
        /// Replays of one signed key exchange, with random ciphertexts.
        #[arg(long, default_value_t = 3000)]
        replays: usize,
        /// Connections announcing a 2 MiB body and sending a byte every 2 s.
        #[arg(long, default_value_t = 200)]
        stalled: usize,
        /// Seconds a stalled connection may live before it counts as not dropped.
        #[arg(long, default_value_t = 30)]
        stall_window: u64,
        /// Malformed or mutated requests.
        #[arg(long, default_value_t = 5000)]
        malformed: usize,
        /// Attack requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Which attacks to run.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "replay,stalled,malformed,stop-list,hostile-backend,replay-many,relay,hog"
        )]
        attacks: Vec<crate::attack::AttackKind>,
        /// Honest challenges per measurement of the stop-list attack (alone, then during it).
        #[arg(long, default_value_t = 10)]
        stop_rounds: usize,
        /// Tokens each of those challenges asks for.
        #[arg(long, default_value_t = 128)]
        stop_tokens: u32,
        /// Replays of one captured exchange from each of 16 addresses (replay-many).
        #[arg(long, default_value_t = 8)]
        replays_per_address: usize,
        /// Deadline-length challenges a relayer tries to keep in flight (relay).
        #[arg(long, default_value_t = 10)]
        relay_in_flight: usize,
        /// Connections the hog keeps trying to hold from one address (hog).
        #[arg(long, default_value_t = 3000)]
        hog_connections: usize,
    },
    /// Seven validators' mixed load on two CPU workers with a short deadline: slot-count admission
    /// without hedging against time-aware admission with hedging, same run.
    Answering {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 7)]
        validators: usize,
        /// Challenges each validator sends, one after another.
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        #[arg(long, default_value_t = 4000)]
        deadline_ms: u64,
        /// Tokens of a short challenge (the others ask for the validator's 12,288).
        #[arg(long, default_value_t = 64)]
        short_tokens: u32,
        /// Sequences each worker generates at once.
        #[arg(long, default_value_t = 2)]
        parallel: u32,
        /// The last mode's `ADMISSION_MAX_WAIT_MS`; by default the product's 2000 ms scaled from
        /// its 50 s deadline to this bench's (`deadline_ms` x 0.04).
        #[arg(long)]
        wait_cap_ms: Option<u64>,
    },
    /// An engine in a child process vs on a thread (tokens/s and first token, same requests),
    /// then the time from a child's death (SIGKILL) to its replacement's first answer.
    Process {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        /// Children killed, one after another (the supervisor's backoff grows: 1 s, 2 s, 4 s).
        #[arg(long, default_value_t = 3)]
        deaths: usize,
        #[arg(long, default_value = "Write a short story about a lighthouse keeper who finds a message in a bottle.")]
        prompt: String,
    },
    /// Time from a worker crash to the first challenge answered by its replacement.
    Recovery {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Metagraph sync time and size for a subnet of N neurons written into a local chain
    /// (chopsticks `dev_setStorage`), against one plain storage read as the reference.
    Metagraph {
        /// ws:// URL of a local chain (scripts/start-chain.sh).
        #[arg(long)]
        chain: String,
        #[arg(long, default_value_t = 256)]
        neurons: u16,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 77)]
        netuid: u16,
    },
    /// Microseconds per sampled token: llama.cpp's top_p/temp/dist chain vs the miner's sampler,
    /// at 49,152 and 151,936 tokens and three logit spreads.
    Sampling {
        /// Draws per line for the new sampler (a quarter of them for the slow old chain).
        #[arg(long, default_value_t = 400)]
        draws: usize,
    },
    /// Tokens/s and time to first token through the miner vs llama.cpp directly, then the
    /// first-token time of a cached 2,000-token system prompt.
    Inference {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long, default_value = "cpu")]
        device: BenchDevice,
        /// The worker's n_parallel.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
        /// Challenges the miner admits at once (MAX_CONCURRENT_REQUESTS); the runs send one at a time.
        #[arg(long, default_value_t = 4)]
        inflight: usize,
        /// How the direct reference samples.
        #[arg(long, value_enum, default_value_t = DirectSampler::Argmax)]
        direct: DirectSampler,
        #[arg(long, default_value = "Write a short story about a lighthouse keeper who finds a message in a bottle.")]
        prompt: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        which: Benchmark,
    }

    fn parse(args: &[&str]) -> Result<Benchmark, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.which)
    }

    #[test]
    fn the_engine_benchmarks_take_a_device_threads_parallel_and_inflight() {
        let Benchmark::Batching { device, threads, parallel, inflight, max_tokens, no_reference, .. } = parse(&[
            "batching",
            "--model",
            "m.gguf",
            "--device",
            "gpu1",
            "--threads",
            "8",
            "--parallel",
            "1,16",
            "--inflight",
            "16",
            "--max-tokens",
            "128",
        ])
        .unwrap() else {
            panic!("batching")
        };
        assert_eq!((device, threads, parallel, inflight), (BenchDevice(Some(1)), 8, vec![1, 16], 16));
        assert_eq!((max_tokens, no_reference), (vec![128], false));

        let Benchmark::Inference { device, parallel, inflight, direct, .. } =
            parse(&["inference", "--model", "m.gguf", "--device", "cpu"]).unwrap()
        else {
            panic!("inference")
        };
        assert_eq!((device, parallel, inflight, direct), (BenchDevice(None), 1, 4, DirectSampler::Argmax));

        // `--concurrency` stays as the old name of `--inflight`.
        let Benchmark::Workers { inflight, device, .. } =
            parse(&["workers", "--model", "m.gguf", "--concurrency", "3", "--device", "gpu0"]).unwrap()
        else {
            panic!("workers")
        };
        assert_eq!((inflight, device), (3, BenchDevice(Some(0))));
    }

    #[test]
    fn a_device_that_is_neither_cpu_nor_a_gpu_is_refused_by_name() {
        let err = parse(&["batching", "--model", "m.gguf", "--device", "tpu0"]).err().expect("refused").to_string();
        assert!(err.contains("cpu or gpuN"), "{err}");
    }
}
