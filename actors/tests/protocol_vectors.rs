//! The protocol checked against vectors recorded from the Loosh validator's own client code
//! (tests/fixtures/vectors, with its provenance in tests/fixtures/README.md).

use std::path::PathBuf;

use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::messages::{ChallengeReply, ChallengeRequest, KeyExchangeRequest};
use loosh_actors::protocol::pyfloat::python_float_repr;
use loosh_actors::protocol::rsa_keys::MinerRsaKey;
use loosh_actors::protocol::signature::verify_sr25519;
use serde_json::Value;

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vectors/loosh-protocol-vectors.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("vectors parse")
}

/// The clock the recordings were made at: every recorded token is checked as of then.
fn recorded_now(v: &Value) -> u64 {
    v["fernet"][0]["now"].as_u64().unwrap()
}

#[test]
fn recorded_key_exchanges_verify_and_unwrap_to_the_recorded_key() {
    let v = vectors();
    let rsa = MinerRsaKey::from_pkcs8_pem(v["miner_rsa_private_key_pkcs8_pem"].as_str().unwrap()).unwrap();
    assert_eq!(rsa.public_pem(), v["miner_rsa_public_key_pem"].as_str().unwrap());
    for ke in v["key_exchanges"].as_array().unwrap() {
        let req: KeyExchangeRequest = serde_json::from_str(ke["raw_body"].as_str().unwrap()).unwrap();
        let message = &req.candidate_signed_messages()[0];
        assert_eq!(message, ke["signed_message"].as_str().unwrap());
        assert_eq!(
            verify_sr25519(&req.validator_hotkey_ss58, message, &req.signature).is_ok(),
            ke["signature_valid"].as_bool().unwrap()
        );
        assert_eq!(rsa.unwrap_fernet_key(&req.encrypted_symmetric_key).unwrap(), ke["fernet_key"].as_str().unwrap());
    }
}

#[test]
fn recorded_signatures_verify_exactly_when_valid() {
    let v = vectors();
    let validator = v["validator_ss58"].as_str().unwrap();
    for case in v["signatures"].as_array().unwrap() {
        let expected = case["signature_valid"].as_bool().unwrap();
        match case.get("raw_body").and_then(Value::as_str) {
            // A whole body: the miner's own path, from the JSON text to the verdict.
            Some(raw) => {
                let req: KeyExchangeRequest = serde_json::from_str(raw).unwrap();
                assert_eq!(&req.candidate_signed_messages()[0], case["signed_message"].as_str().unwrap());
                let accepted = req
                    .candidate_signed_messages()
                    .iter()
                    .any(|m| verify_sr25519(&req.validator_hotkey_ss58, m, &req.signature).is_ok());
                assert_eq!(accepted, expected, "{case}");
            }
            // A message and a signature: `<Bytes>` wrapping, a missing `0x`, a timestamp written
            // other than Python writes it (".50" where the validator signed ".5").
            None => {
                let message = case["signed_message"].as_str().unwrap();
                let signature = case["signature"].as_str().unwrap();
                assert_eq!(verify_sr25519(validator, message, signature).is_ok(), expected, "{case}");
            }
        }
    }
}

#[test]
fn recorded_challenges_decrypt_and_recorded_replies_parse() {
    let v = vectors();
    let now = recorded_now(&v);
    for c in v["challenges"].as_array().unwrap() {
        let key = FernetKey::from_key_text(c["fernet_key"].as_str().unwrap()).unwrap();
        let plain = key.decrypt_at(c["token"].as_str().unwrap().as_bytes(), 3600, now).unwrap();
        assert_eq!(String::from_utf8(plain.clone()).unwrap(), c["plaintext"].as_str().unwrap());
        let req: ChallengeRequest = serde_json::from_slice(&plain).unwrap();
        assert!(req.conversation().is_some());
        let reply = key.decrypt_at(c["reply_token"].as_str().unwrap().as_bytes(), 3600, now).unwrap();
        assert_eq!(String::from_utf8(reply.clone()).unwrap(), c["reply_plaintext"].as_str().unwrap());
        let parsed: ChallengeReply = serde_json::from_slice(&reply).unwrap();
        // What we would send back re-serialises to the same JSON value the validator accepted.
        let ours: Value = serde_json::to_value(&parsed).unwrap();
        let theirs: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(ours, theirs);
    }
}

#[test]
fn recorded_fernet_cases_are_accepted_or_refused_as_recorded() {
    let v = vectors();
    for case in v["fernet"].as_array().unwrap() {
        let key = FernetKey::from_key_text(case["key"].as_str().unwrap()).unwrap();
        let result = key.decrypt_at(
            case["token"].as_str().unwrap().as_bytes(),
            case["ttl"].as_u64().unwrap(),
            case["now"].as_u64().unwrap(),
        );
        assert_eq!(result.is_ok(), case["valid"].as_bool().unwrap(), "{case}");
        if let Ok(plain) = result {
            assert_eq!(String::from_utf8(plain).unwrap(), case["plaintext"].as_str().unwrap());
        }
    }
}

#[test]
fn python_float_repr_matches_recorded_cpython() {
    let v = vectors();
    for pair in v["python_float_repr"].as_array().unwrap() {
        assert_eq!(python_float_repr(pair[0].as_f64().unwrap()), pair[1].as_str().unwrap());
    }
}
