//! The miner binary, driven over loopback by a validator-side client written in Python from
//! PROTOCOL.md with PyPI `cryptography` and `substrate-interface` (tests/interop/validator_client.py),
//! and by our own `probe` command.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VALIDATOR_SEED: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
const VALIDATOR_SS58: &str = "5DtDLm5rQHShDqojQpsvcN8tRXHVFaecfDoRet1SU6BFD9Fi";
const OTHER_SEED: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";

struct Miner {
    child: Child,
    url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Miner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the miner and returns once its log says it serves and `/availability` is true.
fn start_miner(model: &std::path::Path, extra: &[(&str, &str)]) -> Miner {
    let port = common::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loosh-miner"));
    cmd.arg("--dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("MODEL_PATH", model)
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", port.to_string())
        .env("LLAMA_THREADS", "1")
        .env("MAX_MODEL_LEN", "2048")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the miner binary starts");
    let stdout = child.stdout.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let miner = Miner { child, url: format!("http://127.0.0.1:{port}"), log };
    let client = reqwest::blocking_free_get;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if client(&format!("{}/availability", miner.url)).is_some_and(|b| b.contains("\"available\":true")) {
            return miner;
        }
        assert!(
            Instant::now() < end,
            "the miner never became available; log:\n{}",
            miner.log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny blocking GET over std (the tests need no async runtime here).
mod reqwest {
    use std::io::{Read, Write};
    pub fn blocking_free_get(url: &str) -> Option<String> {
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
        let mut s = std::net::TcpStream::connect(host).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }
}

#[test]
fn a_python_validator_client_following_protocol_md_gets_correct_answers_and_errors() {
    let Some(model) = common::tiny_model() else {
        return;
    };
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
    let Some(model) = common::tiny_model() else {
        return;
    };
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
