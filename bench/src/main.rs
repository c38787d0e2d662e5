//! The `loosh-bench` command: one benchmark of the miner per subcommand, each against a reference
//! in the same run (see the crate's documentation for the list).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loosh-bench", version, about = "loosh-miner measured against references in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Bench(loosh_bench::Benchmark),
    /// One embedded engine in a process of its own: the node this binary starts runs its child
    /// engines from the same executable, as `loosh-miner` does.
    #[command(name = "engine-child", hide = true)]
    EngineChild,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => loosh_bench::run(args),
        Command::EngineChild => loosh_miner::node::run_engine_child(),
    }
}
