//! `loosh-miner probe URL`: acts as a validator against any miner (ours or the Python one) and
//! prints each step with its timing, so an operator can check a deployed miner from outside.

use std::time::Instant;

use loosh_actors::settings::Hotkey;

use crate::client::validator::{challenge_body, ValidatorClient};

pub struct ProbeOptions {
    pub url: String,
    pub prompt: String,
    pub max_tokens: u32,
    pub validator_seed: Option<[u8; 32]>,
}

/// Runs the probe; returns whether every step succeeded.
pub async fn run(opts: ProbeOptions) -> bool {
    let hotkey = match opts.validator_seed {
        Some(seed) => Hotkey::from_seed(seed).expect("32-byte seed"),
        None => Hotkey::ephemeral(),
    };
    println!("probing {} as validator {}", opts.url, hotkey.ss58());
    let mut client = ValidatorClient::new(&opts.url, hotkey);
    let mut ok = true;

    let t = Instant::now();
    match client.availability().await {
        Ok(v) => {
            let available = v["available"] == serde_json::json!(true);
            ok &= available;
            println!("{} availability     {:>8.1} ms  {v}", mark(available), ms(t));
        }
        Err(e) => {
            println!("FAIL availability     {:>8.1} ms  {e}", ms(t));
            return false;
        }
    }
    let t = Instant::now();
    match client.fetch_public_key().await {
        Ok(pem) => println!("ok   public key       {:>8.1} ms  {} bytes of PEM", ms(t), pem.len()),
        Err(e) => {
            println!("FAIL public key       {:>8.1} ms  {e}", ms(t));
            return false;
        }
    }
    let t = Instant::now();
    match client.handshake().await {
        Ok(()) => println!("ok   key exchange     {:>8.1} ms", ms(t)),
        Err(e) => {
            println!("FAIL key exchange     {:>8.1} ms  {e}", ms(t));
            return false;
        }
    }
    let t = Instant::now();
    match client.challenge_once(&challenge_body(&opts.prompt, opts.max_tokens, 0.7)).await {
        Ok((reply, timing)) => {
            println!(
                "ok   challenge        {:>8.1} ms  (encrypt {:.2} ms, round trip {:.1} ms, decrypt {:.2} ms, miner says {} ms)",
                ms(t),
                timing.encrypt.as_secs_f64() * 1e3,
                timing.round_trip.as_secs_f64() * 1e3,
                timing.decrypt.as_secs_f64() * 1e3,
                reply.response_time_ms
            );
            println!(
                "     finish_reason={} usage={}+{} tokens tool_calls={}",
                reply.finish_reason,
                reply.usage.prompt_tokens,
                reply.usage.completion_tokens,
                reply.tool_calls.as_ref().map_or(0, Vec::len)
            );
            println!("     response_text: {}", reply.response_text);
        }
        Err(e) => {
            ok = false;
            println!("FAIL challenge        {:>8.1} ms  {e}", ms(t));
        }
    }
    ok
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok  "
    } else {
        "FAIL"
    }
}
