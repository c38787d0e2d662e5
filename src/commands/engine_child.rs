//! `loosh-miner engine-child` (hidden): one embedded engine in a process of its own, driven by its
//! worker over stdin/stdout; the node starts it, never an operator.

pub fn run() -> ! {
    loosh_miner::node::run_engine_child()
}
