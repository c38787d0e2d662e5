//! The miner binary, driven over loopback by a validator-side client written in Python from
//! PROTOCOL.md with PyPI `cryptography` and `substrate-interface` (tests/interop/validator_client.py),
//! and by our own `probe` command.

mod common;

use std::process::Command;

const VALIDATOR_SEED: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
const VALIDATOR_SS58: &str = "5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi";
const OTHER_SEED: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";

fn start_miner(model: &std::path::Path, extra: &[(&str, &str)]) -> common::MinerProcess {
    common::MinerProcess::start(model, true, extra)
}

#[test]
fn a_python_validator_client_following_protocol_md_gets_correct_answers_and_errors() {
    let model = common::tiny_model();
    let miner = start_miner(
        &model,
        &[
            ("VALIDATOR_HOTKEYS", VALIDATOR_SS58),
            ("ENABLE_VALIDATOR_WHITELIST", "true"),
            ("FIBER_KEY_TTL_SECONDS", "3"),
            ("FIBER_KEY_GRACE_SECONDS", "1"),
        ],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/validator_client.py");
    let out = Command::new(common::python())
        .args([
            script,
            "--url",
            &miner.url,
            "--ops-url",
            &miner.ops_url,
            "--seed",
            VALIDATOR_SEED,
            "--other-seed",
            OTHER_SEED,
            "--key-ttl",
            "3",
            "--grace",
            "1",
        ])
        .output()
        .expect("python3 runs (scripts/install.sh installs cryptography and substrate-interface)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the validator client reported failures:\n{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("24 passed, 0 failed")), "every case ran: {stdout}");

    // The miner logged the refusals it served, without leaking key material.
    let log = miner.log.lock().unwrap().join("\n");
    assert!(log.contains("key exchange refused") && log.contains("challenge refused"));
    assert!(!log.contains("gAAAAA"), "no Fernet token in the logs");
}

#[test]
fn the_probe_command_checks_a_running_miner_end_to_end() {
    let model = common::tiny_model();
    let miner = start_miner(&model, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
        .args(["probe", &miner.url, "--max-tokens", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for step in ["availability", "public key", "key exchange", "challenge"] {
        assert!(stdout.lines().any(|l| l.starts_with("ok") && l.contains(step)), "{step} missing from:\n{stdout}");
    }
    // Against a miner that is not there, the probe fails and says where.
    let out = Command::new(env!("CARGO_BIN_EXE_loosh-miner")).args(["probe", "http://127.0.0.1:1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL availability"));
}

#[test]
fn configuration_errors_name_the_variable_and_stop_the_miner() {
    let out = Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
        .arg("--dev")
        .env_clear()
        .env("API_PORT", "eighty")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("API_PORT=\"eighty\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
        .arg("--dev")
        .env_clear()
        .env("MODEL_PATH", "/nonexistent/model.gguf")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MODEL_PATH"));

    // Without --dev the wallet is read, and a missing one is explained.
    let home = tempfile::tempdir().unwrap();
    let model = home.path().join("m.gguf");
    std::fs::write(&model, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
        .env_clear()
        .env("HOME", home.path())
        .env("MODEL_PATH", &model)
        .current_dir(home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".bittensor/wallets/miner/hotkeys/miner") && err.contains("btcli"), "{err}");
}
