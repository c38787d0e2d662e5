//! Polls the Loosh Challenge API's list of active validators (`GET /validators/active-hotkeys`,
//! signed with our hotkey as PROTOCOL.md describes) and feeds it into the allowed validator set.
//!
//! Runs beside the request path, never in it: a slow or failing API only means the last good list
//! stays in force, and the logs and `/metrics` say so.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

use crate::authorization::Source;
use crate::bounded_body::{read_json_capped, SMALL_ANSWER_CAP};
use crate::protocol::signature::{ss58_decode, Hotkey};
use crate::validator_set::ValidatorSet;

#[derive(Clone)]
pub struct ChallengeApiArgs {
    /// Base URL, e.g. `https://challenge.loosh.ai`.
    pub url: String,
    pub hotkey: Hotkey,
    pub every: Duration,
    /// Where the list goes: a validator that leaves it loses its keys and its metrics.
    pub validators: ValidatorSet,
}

pub enum ChallengeApiMsg {
    Poll,
    /// Poll now and report the outcome (tests, doctor).
    PollNow(RpcReplyPort<Result<usize, String>>),
}

pub struct ChallengeApiPoller;

pub struct PollerState {
    args: ChallengeApiArgs,
    http: reqwest::Client,
}

/// The entries of the API's answer: a list of `{hotkey_ss58, ip}` objects or bare strings, possibly
/// wrapped in an object.
fn active_entries(body: &Value) -> &[Value] {
    match body {
        Value::Array(items) => items.as_slice(),
        Value::Object(map) => ["hotkeys", "validators", "active_hotkeys", "data"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_array))
            .map(Vec::as_slice)
            .unwrap_or(&[]),
        _ => &[],
    }
}

/// An object entry's hotkey (`hotkey_ss58`, else `hotkey`).
fn entry_hotkey(o: &serde_json::Map<String, Value>) -> Option<&str> {
    o.get("hotkey_ss58").or_else(|| o.get("hotkey")).and_then(Value::as_str)
}

/// The hotkeys in the API's answer ([`active_entries`]). Entries that are not SS58 addresses are
/// skipped.
pub fn parse_active_hotkeys(body: &Value) -> HashSet<String> {
    active_entries(body)
        .iter()
        .filter_map(|e| match e {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => entry_hotkey(o),
            _ => None,
        })
        .filter(|h| ss58_decode(h).is_ok())
        .map(String::from)
        .collect()
}

/// The address the API reports for each validator (`{hotkey_ss58, ip}` entries; an `ip` that is
/// not an address, or `0.0.0.0`, is no report): where that validator's traffic is expected from.
pub fn parse_active_addresses(body: &Value) -> HashMap<String, HashSet<IpAddr>> {
    let mut out: HashMap<String, HashSet<IpAddr>> = HashMap::new();
    for o in active_entries(body).iter().filter_map(Value::as_object) {
        let Some(hotkey) = entry_hotkey(o) else { continue };
        let Some(ip) = o.get("ip").and_then(Value::as_str).and_then(|ip| ip.trim().parse::<IpAddr>().ok()) else {
            continue;
        };
        if ss58_decode(hotkey).is_ok() && !ip.is_unspecified() {
            out.entry(hotkey.to_string()).or_default().insert(ip);
        }
    }
    out
}

impl PollerState {
    async fn poll(&mut self) -> Result<usize, String> {
        let url = format!("{}/validators/active-hotkeys", self.args.url.trim_end_matches('/'));
        let nonce = crate::protocol::fernet_codec::unix_now().to_string();
        let hotkey = self.args.hotkey.ss58().to_string();
        let signature = self.args.hotkey.sign_hex(format!("{nonce}:{hotkey}").as_bytes());
        let res = self
            .http
            .get(&url)
            .header("X-Hotkey", &hotkey)
            .header("X-Nonce", &nonce)
            .header("X-Signature", signature)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("{url} answered {}", res.status()));
        }
        // A list of validators is a few KiB: an answer without end is refused at the cap.
        let body: Value = read_json_capped(res, SMALL_ANSWER_CAP).await.map_err(|e| format!("{url}: {e}"))?;
        let hotkeys = parse_active_hotkeys(&body);
        let count = hotkeys.len();
        if count > 0 {
            self.args.validators.auth.set_reported_addresses(Source::ChallengeApi, parse_active_addresses(&body));
        }
        self.args.validators.replace(Source::ChallengeApi, hotkeys);
        Ok(count)
    }

    async fn poll_and_record(&mut self) -> Result<usize, String> {
        let result = self.poll().await;
        let m = &self.args.validators.metrics;
        match &result {
            Ok(n) => {
                m.challenge_api_polls.with_label_values(&["ok"]).inc();
                m.challenge_api_validators.set(*n as i64);
            }
            Err(e) => {
                m.challenge_api_polls.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "Challenge API poll failed; keeping the last list");
            }
        }
        result
    }
}

impl Actor for ChallengeApiPoller {
    type Msg = ChallengeApiMsg;
    type State = PollerState;
    type Arguments = ChallengeApiArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ChallengeApiMsg>,
        args: ChallengeApiArgs,
    ) -> Result<PollerState, ActorProcessingErr> {
        myself.send_interval(args.every, || ChallengeApiMsg::Poll);
        myself.cast(ChallengeApiMsg::Poll)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(PollerState { args, http })
    }

    async fn handle(
        &self,
        _: ActorRef<ChallengeApiMsg>,
        msg: ChallengeApiMsg,
        state: &mut PollerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChallengeApiMsg::Poll => {
                let _ = state.poll_and_record().await;
            }
            ChallengeApiMsg::PollNow(reply) => {
                let _ = reply.send(state.poll_and_record().await);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_addresses_are_read_from_the_entries_that_carry_one() {
        let (v, w) = (Hotkey::ephemeral(), Hotkey::ephemeral());
        let body = serde_json::json!({"validators": [
            {"hotkey_ss58": v.ss58(), "ip": "203.0.113.5"},
            {"hotkey": w.ss58(), "ip": "0.0.0.0"},
            {"hotkey_ss58": "not-an-address", "ip": "203.0.113.6"},
            w.ss58(),
        ]});
        let addresses = parse_active_addresses(&body);
        assert_eq!(addresses.len(), 1, "{addresses:?}");
        assert!(addresses[v.ss58()].contains(&"203.0.113.5".parse::<IpAddr>().unwrap()));
        assert_eq!(parse_active_hotkeys(&body).len(), 2);
    }

    #[test]
    fn active_hotkeys_parse_in_every_shape_the_api_uses() {
        let v = "5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi";
        let w = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let body = serde_json::json!([{"hotkey_ss58": v, "ip": "1.2.3.4"}, w, "not-an-address", 7]);
        assert_eq!(parse_active_hotkeys(&body), [v.to_string(), w.to_string()].into());
        let wrapped = serde_json::json!({"validators": [{"hotkey": v}]});
        assert_eq!(parse_active_hotkeys(&wrapped), [v.to_string()].into());
        assert!(parse_active_hotkeys(&serde_json::json!({"x": 1})).is_empty());
    }
}
