//! `loosh-miner doctor`: one line per thing that must be right for the miner to earn, each failure
//! with its fix. Exit status 0 only when nothing failed.

use std::time::Duration;

use loosh_actors::front_door::{ChainClient, OpenAiClient};
use loosh_actors::settings::EngineSpec;

use crate::config::Config;

mod hints;

struct Report {
    failed: bool,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what:<12} {detail}");
    }
    fn warn(&self, what: &str, detail: impl std::fmt::Display) {
        println!("warn  {what:<12} {detail}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failed = true;
        println!("FAIL  {what:<12} {detail}");
    }
}

/// The GGUF format version from the file's first 8 bytes (magic `GGUF`, then a little-endian u32),
/// or `None` when the magic is not there. Only the header is read: a model is tens of GB.
fn gguf_version(path: &std::path::Path) -> std::io::Result<Option<u32>> {
    use std::io::Read;
    let mut header = [0u8; 8];
    let mut file = std::fs::File::open(path)?;
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok((&header[..4] == b"GGUF").then(|| u32::from_le_bytes([header[4], header[5], header[6], header[7]])))
}

/// Fernet tokens stamped more than 60 s ahead are refused; warn well before that.
const MAX_CLOCK_SKEW_SECS: f64 = 20.0;

/// Runs every check; returns whether all passed.
pub async fn run(cfg: &Config) -> bool {
    let mut r = Report { failed: false };

    let hotkey = match crate::wallet::load_hotkey(&cfg.wallet_path) {
        Ok(h) => {
            r.ok("wallet", format!("{} -> {}", cfg.wallet_path.display(), h.ss58()));
            Some(h)
        }
        Err(e) => {
            r.fail("wallet", e);
            None
        }
    };

    let chain = match cfg.chain_url() {
        Err(e) => {
            r.fail("chain", e);
            None
        }
        Ok(url) => match tokio::time::timeout(Duration::from_secs(20), ChainClient::connect(&url)).await {
            Ok(Ok(c)) => {
                let block = c.block_number().await.map(|b| b.to_string()).unwrap_or_else(|e| e.to_string());
                r.ok("chain", format!("{url} at block {block}"));
                Some(c)
            }
            Ok(Err(e)) => {
                r.fail("chain", format!("{e} (check SUBTENSOR_ADDRESS / SUBTENSOR_NETWORK and the network path)"));
                None
            }
            Err(_) => {
                r.fail("chain", format!("{url}: no answer in 20 s (check SUBTENSOR_ADDRESS and the firewall)"));
                None
            }
        },
    };

    if let (Some(chain), Some(hotkey)) = (&chain, &hotkey) {
        match chain.uid_of(cfg.chain.netuid, hotkey.account_id()).await {
            Ok(Some(uid)) => r.ok("registered", format!("uid {uid} on subnet {}", cfg.chain.netuid)),
            // The start-up error's text: the btcli command with the network and netuid in use.
            Ok(None) => r.fail("registered", crate::registration::StartError::not_registered(cfg, hotkey)),
            Err(e) => r.fail("registered", e),
        }
        let held = chain.axon_of(cfg.chain.netuid, hotkey.account_id()).await.ok().flatten().and_then(|a| a.addr());
        match (held, cfg.chain.axon) {
            (Some(h), Some(want)) if h == want => r.ok("axon", format!("{}:{} on chain, as configured", h.0, h.1)),
            (held, Some(want)) => r.fail(
                "axon",
                format!(
                    "the chain holds {held:?}, AXON_EXTERNAL_* say {}:{}: run `loosh-miner post-ip --external-ip {} --external-port {}` (the running node also does it)",
                    want.0, want.1, want.0, want.1
                ),
            ),
            (Some(h), None) => r.ok("axon", format!("{}:{} on chain (set AXON_EXTERNAL_IP to let the node keep it current)", h.0, h.1)),
            (None, None) => r.fail("axon", "no axon on chain: validators cannot find you; run `loosh-miner post-ip` or set AXON_EXTERNAL_IP"),
        }
        match chain.clock_skew_secs().await {
            Ok(skew) => {
                if skew.abs() <= MAX_CLOCK_SKEW_SECS {
                    r.ok("clock", format!("{skew:+.1} s from the chain's clock"));
                } else {
                    r.fail("clock", format!("{skew:+.1} s from the chain's clock: sync it with NTP (chrony), validators' Fernet refuses tokens over 60 s ahead"));
                }
            }
            Err(e) => r.warn("clock", format!("cannot read the chain's clock: {e}")),
        }
    }

    let gpus = loosh_actors::settings::gpu_devices();
    let mut served: Vec<String> = Vec::new();
    match crate::config::workers::worker_specs(cfg, &gpus) {
        Err(e) => r.fail("workers", e),
        Ok(specs) => {
            for spec in specs {
                served.push(match &spec.engine {
                    EngineSpec::Embedded(e) => hints::gguf_name(&e.model_path).ok().flatten().unwrap_or_else(|| {
                        e.model_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
                    }),
                    EngineSpec::OpenAi(o) => o.model.clone(),
                });
                match &spec.engine {
                    EngineSpec::Embedded(e) => match gguf_version(&e.model_path) {
                        Ok(Some(version)) => r.ok(
                            "worker",
                            format!("{} ({}): {} (GGUF v{version})", spec.name, spec.device, e.model_path.display()),
                        ),
                        Ok(None) => {
                            r.fail("worker", format!("{}: {} is not a GGUF file", spec.name, e.model_path.display()))
                        }
                        Err(err) => r.fail("worker", format!("{}: {}: {err}", spec.name, e.model_path.display())),
                    },
                    EngineSpec::OpenAi(o) => match OpenAiClient::new(o.clone()) {
                        Ok(client) => match client.health().await {
                            Ok(models) => r.ok("worker", format!("{}: {} serves {models:?}", spec.name, o.base_url)),
                            Err(e) => {
                                r.fail("worker", format!("{}: {e} (start the server, or fix base_url)", spec.name))
                            }
                        },
                        Err(e) => r.fail("worker", format!("{}: {e}", spec.name)),
                    },
                }
            }
        }
    }
    model_hints(&r, cfg, &served);
    !r.failed
}

/// Compares the served models' family with the hint most challenges carried, as counted by the
/// running miner (see [`hints`]). A warning, never a failure: the hint is the validator's own
/// model, not a rule.
fn model_hints(r: &Report, cfg: &Config, served: &[String]) {
    let metrics = crate::client::ops::ops_address(cfg)
        .and_then(|addr| crate::client::ops::get(&addr, "/metrics", Duration::from_secs(3)));
    let text = match metrics {
        Ok(text) => text,
        Err(e) => {
            r.warn("model hint", format!("cannot read the validators' model hints from the running miner: {e}"));
            return;
        }
    };
    let Some((hint, n, total)) = hints::top_hint(&text) else {
        r.ok("model hint", "no challenge has carried a model hint yet");
        return;
    };
    let want = hints::family(&hint);
    let others: Vec<&String> = served.iter().filter(|m| hints::family(m) != want).collect();
    if others.is_empty() {
        r.ok(
            "model hint",
            format!("validators mostly hint {hint} ({n} of {total} challenges): family {want}, as served"),
        );
    } else {
        let names: Vec<String> = others.iter().map(|m| format!("{m} (family {})", hints::family(m))).collect();
        r.warn(
            "model hint",
            format!(
                "validators mostly hint {hint} ({n} of {total} challenges, family {want}), but this miner serves {}: answers from another family fall outside the validators' dominant cluster more often (x1.2 inside it); serve a {want} model",
                names.join(", ")
            ),
        );
    }
}
