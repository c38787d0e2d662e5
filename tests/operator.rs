//! The miner as an operator meets it: the real binary, started with the Python miner's `.env`
//! habits, read through what it prints and the files it writes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// `loosh-miner <args>` with only `vars` set (and PATH, HOME), run in `dir` so that no `.env` of
/// the developer's is read.
fn miner(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loosh-miner"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .current_dir(dir);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("the miner binary runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn llamacpp_without_a_model_file_is_the_python_miners_llama_cpp_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = miner(dir.path(), &["config"], &[("LLM_BACKEND", "llamacpp")]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("inference: llama.cpp server at http://localhost:8080/v1"), "{said}");
    assert!(!said.contains("differs from the Python miner"), "nothing differs here: {said}");

    let out = miner(
        dir.path(),
        &["config"],
        &[("LLM_BACKEND", "llamacpp"), ("LLAMACPP_API_BASE", "http://10.0.0.5:8080/v1")],
    );
    assert!(text(&out).contains("llama.cpp server at http://10.0.0.5:8080/v1"), "{}", text(&out));
}

#[test]
fn llamacpp_with_a_model_file_runs_it_in_process_and_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model();
    let model = model.to_str().unwrap();
    let out =
        miner(dir.path(), &["config"], &[("LLM_BACKEND", "llamacpp"), ("MODEL_PATH", model), ("AXON_PORT", "8089")]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&format!("inference: embedded llama.cpp, model {model}")), "{said}");
    assert!(said.contains("differs from the Python miner: LLM_BACKEND=llamacpp with MODEL_PATH runs"), "{said}");
    assert!(said.contains("differs from the Python miner: MAX_MODEL_LEN=8192 is per challenge"), "{said}");
    assert!(said.contains("differs from the Python miner: AXON_PORT is not acted on"), "{said}");
}

#[test]
fn the_python_miners_vllm_default_is_kept_and_a_backend_on_our_own_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = miner(dir.path(), &["config"], &[("LLM_BACKEND", "vllm")]);
    assert!(text(&out).contains("vLLM server at http://localhost:8001/v1"), "{}", text(&out));

    let out = miner(dir.path(), &["config"], &[("LLM_BACKEND", "vllm"), ("VLLM_API_BASE", "http://localhost:8000/v1")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("VLLM_API_BASE=\"http://localhost:8000/v1\""), "{}", text(&out));
}

#[test]
fn the_wallet_path_of_the_python_miners_docker_set_up_is_where_the_wallet_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = miner(
        dir.path(),
        &["config"],
        &[("WALLET_PATH", "/data/wallets"), ("WALLET_NAME", "cold"), ("HOTKEY_NAME", "hot")],
    );
    assert!(text(&out).contains("wallet /data/wallets/cold/hotkeys/hot"), "{}", text(&out));
}
