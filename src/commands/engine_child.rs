//! `loosh-miner engine-child` (hidden): one embedded engine in a process of its own, driven by its
//! worker over stdin/stdout; the node starts it, never an operator.

pub fn run() -> ! {
    // Its log goes to stderr, which the worker re-logs under the worker's name.
    loosh_miner::logging::init_engine_child();
    std::process::exit(loosh_actors::front_door::FrontDoor::run_engine_child());
}
