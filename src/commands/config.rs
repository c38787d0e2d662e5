//! `loosh-miner config`: print the configuration as resolved from the environment and `.env`, and
//! where it differs from the Python miner; an invalid one fails (exit status 1).

use anyhow::Context;
use loosh_miner::config::{Config, Source};

pub fn run() -> anyhow::Result<()> {
    let src = Source::load();
    for line in &src.unreadable {
        println!("unreadable: {line} (skipped, as python-dotenv skips it)");
    }
    src.check_named_file().context("invalid configuration")?;
    let cfg = Config::from_source(&src).context("invalid configuration")?;
    cfg.validate().context("invalid configuration")?;
    for line in cfg.summary() {
        println!("{line}");
    }
    for line in cfg.python_differences() {
        println!("differs from the Python miner: {line}");
    }
    Ok(())
}
