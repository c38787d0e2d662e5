//! Property tests: every parser a peer can reach returns a value or a precise error, never a panic,
//! and the codecs round-trip.
//!
//! CI runs proptest's default 256 cases per property. The long run (not in CI), 10⁶ inputs per
//! property:
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test --release -p loosh-actors --test parsers_never_panic
//! ```

use loosh_actors::protocol::fernet_codec::{unix_now, FernetError, FernetKey};
use loosh_actors::protocol::messages::{echo_timing, ChallengeRequest, KeyExchangeRequest};
use loosh_actors::protocol::pyfloat::python_float_repr;
use loosh_actors::protocol::signature::{parse_signature, ss58_decode, ss58_encode, verify_any};
use proptest::prelude::*;

/// JSON-ish text: mostly the field names and shapes a key exchange or challenge uses, with noise.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("\"encrypted_symmetric_key\"".to_string()),
        Just("\"symmetric_key_uuid\"".to_string()),
        Just("\"timestamp\"".to_string()),
        Just("\"nonce\"".to_string()),
        Just("\"signature\"".to_string()),
        Just("\"validator_hotkey_ss58\"".to_string()),
        Just("\"messages\"".to_string()),
        Just("\"prompt\"".to_string()),
        Just("\"metadata\"".to_string()),
        Just("\"timing_data\"".to_string()),
        Just("\"stages\"".to_string()),
        Just("\"stop\"".to_string()),
        Just("\"max_tokens\"".to_string()),
        Just("\"role\"".to_string()),
        Just("\"content\"".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("null".to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        "\"[ -~]{0,12}\"",
        "[ -~]{0,4}",
    ];
    prop::collection::vec(atom, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn key_exchange_json_never_panics(text in jsonish(), raw in prop::collection::vec(any::<u8>(), 0..256)) {
        for bytes in [text.as_bytes(), raw.as_slice()] {
            if let Ok(ke) = serde_json::from_slice::<KeyExchangeRequest>(bytes) {
                let _ = ke.timestamp_secs();
                let messages = ke.candidate_signed_messages();
                prop_assert!(!messages.is_empty());
                let _ = verify_any(&ke.validator_hotkey_ss58, &messages, &ke.signature);
            }
        }
    }

    #[test]
    fn a_well_formed_key_exchange_with_any_timestamp_text_never_panics(ts in "[-+0-9.eE\"a-z]{0,40}") {
        let body = format!(
            r#"{{"encrypted_symmetric_key":"00","symmetric_key_uuid":"u","timestamp":{ts},"nonce":"n","signature":"0x00","validator_hotkey_ss58":"5x"}}"#
        );
        if let Ok(ke) = serde_json::from_str::<KeyExchangeRequest>(&body) {
            if let Some(t) = ke.timestamp_secs() {
                prop_assert!(t.is_finite());
            }
            let _ = ke.candidate_signed_messages();
        }
    }

    #[test]
    fn challenge_json_never_panics(text in jsonish()) {
        if let Ok(req) = serde_json::from_str::<ChallengeRequest>(&text) {
            let _ = req.conversation();
            let _ = req.stop_strings();
            let _ = echo_timing(req.metadata.as_ref(), 1.0, 2.0, 3.0);
        }
    }

    #[test]
    fn fernet_tokens_decrypt_or_name_the_reason(raw in prop::collection::vec(any::<u8>(), 0..300), flip in any::<(usize, u8)>()) {
        let (_, key) = FernetKey::generate();
        let now = unix_now();
        let _ = key.decrypt_at(&raw, 3600, now);
        let token = key.encrypt(&raw);
        prop_assert_eq!(key.decrypt_at(token.as_bytes(), 3600, now).unwrap(), raw.clone());
        // Any single-byte change to a token is refused, never accepted and never a panic.
        let mut mutated = token.into_bytes();
        let i = flip.0 % mutated.len();
        let bit = flip.1 | 1;
        mutated[i] ^= bit;
        match key.decrypt_at(&mutated, 3600, now) {
            Ok(plain) => prop_assert_eq!(plain, raw, "only a padding-equivalent change may decrypt"),
            Err(e) => {
                let named = matches!(
                    e,
                    FernetError::Malformed
                        | FernetError::WrongKey
                        | FernetError::Expired { .. }
                        | FernetError::FromFuture { .. }
                );
                prop_assert!(named, "{:?}", e);
            }
        }
    }

    #[test]
    fn ss58_decodes_or_refuses_and_round_trips(text in "[1-9A-HJ-NP-Za-km-z]{0,60}", key in any::<[u8; 32]>(), sig in "[ -~]{0,140}") {
        let _ = ss58_decode(&text);
        let _ = parse_signature(&sig);
        let address = ss58_encode(&key);
        prop_assert_eq!(ss58_decode(&address).unwrap(), key);
    }

    #[test]
    fn python_float_text_round_trips(value in any::<f64>()) {
        let text = python_float_repr(value);
        if value.is_finite() {
            let back: f64 = text.parse().unwrap();
            prop_assert_eq!(back.to_bits(), value.to_bits(), "{}", text);
        }
    }
}
