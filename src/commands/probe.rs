//! `loosh-miner probe URL`: act as a validator against a miner (key exchange, challenge) and report
//! each step; exit status 1 when a step fails.

use anyhow::Context;
use loosh_miner::client::probe;

pub fn run(url: String, prompt: String, max_tokens: u32, validator_seed: Option<String>) -> anyhow::Result<()> {
    let validator_seed = validator_seed
        .map(|s| {
            hex::decode(s.trim_start_matches("0x"))
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .context("--validator-seed must be 32 bytes of hex")
        })
        .transpose()?;
    let rt = tokio::runtime::Runtime::new()?;
    let ok = rt.block_on(probe::run(probe::ProbeOptions { url, prompt, max_tokens, validator_seed }));
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
