//! The miner as an operator meets it: the real binary, started with the Python miner's `.env`
//! habits, read through what it prints and the files it writes.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::MinerProcess;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ValidatorClient};

/// `loosh-miner <args>` with only `vars` set (and PATH, HOME), run in `dir` so that no `.env` of
/// the developer's is read.
fn run_miner(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
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
    let out = run_miner(dir.path(), &["config"], &[("LLM_BACKEND", "llamacpp")]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("inference: llama.cpp server at http://localhost:8080/v1"), "{said}");
    assert!(!said.contains("differs from the Python miner"), "nothing differs here: {said}");

    let out = run_miner(
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
    let out = run_miner(
        dir.path(),
        &["config"],
        &[("LLM_BACKEND", "llamacpp"), ("MODEL_PATH", model), ("AXON_PORT", "8089")],
    );
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
    let out = run_miner(dir.path(), &["config"], &[("LLM_BACKEND", "vllm")]);
    assert!(text(&out).contains("vLLM server at http://localhost:8001/v1"), "{}", text(&out));

    let out =
        run_miner(dir.path(), &["config"], &[("LLM_BACKEND", "vllm"), ("VLLM_API_BASE", "http://localhost:8000/v1")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("VLLM_API_BASE=\"http://localhost:8000/v1\""), "{}", text(&out));
}

#[test]
fn the_wallet_path_of_the_python_miners_docker_set_up_is_where_the_wallet_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_miner(
        dir.path(),
        &["config"],
        &[("WALLET_PATH", "/data/wallets"), ("WALLET_NAME", "cold"), ("HOTKEY_NAME", "hot")],
    );
    assert!(text(&out).contains("wallet /data/wallets/cold/hotkeys/hot"), "{}", text(&out));
}

/// Polls (bounded) until `path` holds `needle`: the file writer is asynchronous.
fn wait_for_file_text(path: &Path, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < end, "{} never held {needle:?}; it holds:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn log_file_is_the_file_written_and_rotation_keeps_log_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/miner.log");
    let log_text = log.to_str().unwrap();
    // 1 KB files: the start-up lines alone fill several, so the oldest must have been dropped.
    let miner = MinerProcess::start(
        &common::tiny_model(),
        true,
        &[("LOG_FILE", log_text), ("LOG_ROTATION", "1KB"), ("LOG_MAX_FILES", "2")],
    );
    // Available means the worker joined the schedule; wait for that line to reach the files.
    let all = || {
        ["miner.log.2", "miner.log.1", "miner.log"]
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join("logs").join(n)).unwrap_or_default())
            .collect::<String>()
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !all().contains("worker joined the schedule") {
        assert!(Instant::now() < end, "the log files never held the last start-up line:\n{}", all());
        std::thread::sleep(Duration::from_millis(20));
    }
    let miner_stdout_first = miner.log.lock().unwrap()[0].clone();
    drop(miner);
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["miner.log", "miner.log.1", "miner.log.2"]);
    let mut kept = String::new();
    for name in &names {
        // Issue 33: owner and group only (0640, less under a narrower umask), rotated files too.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("logs").join(name)).unwrap().permissions().mode() & 0o777;
        assert!(mode & 0o600 == 0o600 && mode & 0o037 == 0, "{name} is {mode:o}");
        let text = std::fs::read_to_string(dir.path().join("logs").join(name)).unwrap();
        assert!(text.len() <= 1024, "{name} has {} bytes, over LOG_ROTATION=1KB", text.len());
        kept.push_str(&text);
    }
    // The first start-up line went to a file past LOG_MAX_FILES, deleted.
    assert!(miner_stdout_first.contains("network: netuid"), "{miner_stdout_first}");
    assert!(!kept.contains("network: netuid"), "the oldest file was kept:\n{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_validator_worker_tokens_and_milliseconds_of_each_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("miner.log");
    let miner = MinerProcess::start(
        &common::tiny_model(),
        true,
        &[("LOG_FILE", log.to_str().unwrap()), ("LOG_FORMAT", "json")],
    );
    let validator = Hotkey::ephemeral();
    let mut client = ValidatorClient::new(&miner.url, validator.clone());
    client.handshake().await.unwrap();
    let (reply, _) = client.challenge(&challenge_body("Say something.", 16, 0.7)).await.unwrap();

    let text = wait_for_file_text(&log, "challenge answered");
    let line = text.lines().find(|l| l.contains("challenge answered")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["message"], "challenge answered");
    assert_eq!(v["worker"], "cpu0");
    assert_eq!(v["tokens"], u64::from(reply.usage.completion_tokens));
    assert!(v["ms"].is_u64(), "{line}");
    let short: String = validator.ss58().chars().take(8).collect();
    assert_eq!(v["span"]["validator"], short, "{line}");
    // stdout is JSON too, line by line.
    let stdout = miner.log.lock().unwrap().clone();
    assert!(stdout.iter().any(|l| l.contains("challenge answered")));
    for l in &stdout {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
}

#[test]
fn doctor_reads_only_the_header_of_a_model_file() {
    let dir = tempfile::tempdir().unwrap();
    // A sparse 1 TiB file that begins like a GGUF v3 model: reading it whole would not fit in memory.
    let model = dir.path().join("huge.gguf");
    let mut file = std::fs::File::create(&model).unwrap();
    std::io::Write::write_all(&mut file, b"GGUF\x03\x00\x00\x00").unwrap();
    file.set_len(1 << 40).unwrap();
    drop(file);
    let not_gguf = dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, "these are not weights").unwrap();
    for (path, expected) in [
        (&model, format!("ok    worker       cpu0 (cpu): {} (GGUF v3)", model.display())),
        (&not_gguf, format!("FAIL  worker       cpu0: {} is not a GGUF file", not_gguf.display())),
    ] {
        let out = run_miner(
            dir.path(),
            &["doctor"],
            &[
                ("MODEL_PATH", path.to_str().unwrap()),
                // Nothing listens there: the chain check fails at once instead of waiting.
                ("SUBTENSOR_ADDRESS", "ws://127.0.0.1:1"),
                ("BITTENSOR_WALLET_PATH", dir.path().to_str().unwrap()),
            ],
        );
        assert!(text(&out).contains(&expected), "{}", text(&out));
    }
}

/// Issue 31: doctor reads the model hints the running miner counted and says when the served
/// model is of another family than the one most validators hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_compares_the_served_models_family_with_the_validators_hint() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model();
    let miner = MinerProcess::start(&model, true, &[]);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    let mut llama = challenge_body("Say something.", 4, 0.7);
    llama["model"] = "meta-llama/Llama-3.1-8B-Instruct".into();
    for body in [challenge_body("Say something.", 4, 0.7), challenge_body("And more.", 4, 0.7), llama] {
        client.challenge(&body).await.unwrap();
    }
    let port = miner.ops_url.rsplit(':').next().unwrap().to_string();
    let doctor = |vars: &[(&str, &str)]| {
        let mut all = vec![
            ("METRICS_PORT", port.as_str()),
            ("SUBTENSOR_ADDRESS", "ws://127.0.0.1:1"),
            ("BITTENSOR_WALLET_PATH", dir.path().to_str().unwrap()),
        ];
        all.extend_from_slice(vars);
        text(&run_miner(dir.path(), &["doctor"], &all))
    };
    // The tiny test model calls itself tiny-random-llama in its GGUF metadata.
    let report = doctor(&[("MODEL_PATH", model.to_str().unwrap())]);
    let line = report.lines().find(|l| l.contains("model hint")).unwrap_or_else(|| panic!("{report}"));
    assert!(line.starts_with("warn"), "{report}");
    assert!(line.contains("qwen2.5-32b-instruct (2 of 3 challenges, family qwen2.5)"), "{line}");
    assert!(line.contains("tiny-random-llama (family tiny)"), "{line}");
    // An OpenAI-compatible server serving a Qwen2.5 model: the same family as the hint.
    let workers =
        r#"[{"kind":"openai","name":"vllm0","base_url":"http://127.0.0.1:1/v1","model":"Qwen/Qwen2.5-7B-Instruct"}]"#;
    let report = doctor(&[("WORKERS", workers)]);
    let line = report.lines().find(|l| l.contains("model hint")).unwrap_or_else(|| panic!("{report}"));
    assert!(line.starts_with("ok") && line.contains("family qwen2.5, as served"), "{report}");
    // No miner running: said plainly, not guessed.
    drop(miner);
    let report = doctor(&[("MODEL_PATH", model.to_str().unwrap())]);
    assert!(
        report.lines().any(|l| l.starts_with("warn  model hint") && l.contains("is the miner running")),
        "{report}"
    );
}

#[test]
fn health_and_metrics_ask_the_running_miner_and_health_fails_when_none_answers() {
    let dir = tempfile::tempdir().unwrap();
    let miner = MinerProcess::start(&common::tiny_model(), true, &[]);
    let port = miner.ops_url.rsplit(':').next().unwrap().to_string();
    let out = run_miner(dir.path(), &["health"], &[("METRICS_PORT", &port)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"status\":\"ok\""), "{}", text(&out));
    // The same operator port serves the build and the process beside the miner's own metrics.
    let metrics = miner.get_ops("/metrics").unwrap();
    let info = format!(
        "loosh_build_info{{features=\"{}\",version=\"{}\"}} 1",
        loosh_miner::process_metrics::build_features(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&info), "{metrics}");
    assert!(miner.metric("process_resident_memory_bytes").is_some_and(|b| b > 1e6), "{metrics}");
    assert!(miner.metric("process_open_fds").is_some_and(|n| n >= 3.0), "{metrics}");
    assert!(metrics.contains("loosh_metagraph_sync_timestamp_seconds "), "{metrics}");
    drop(miner);
    let out = run_miner(dir.path(), &["health"], &[("METRICS_PORT", &port)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is the miner running"), "{}", text(&out));
}

/// The `KEY=value` of a unit or process file, first match.
fn setting<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or_else(|| panic!("no {key}"))
}

/// What a stop may take: the HTTP drain (actix's shutdown timeout) plus the engines' exit wait.
const DRAIN_SECS: u64 = 55 + 30;

#[test]
fn the_systemd_unit_verifies_and_outwaits_the_drain() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/loosh-miner.service")).unwrap();
    // Verified as installed, with the binary just built in the place of /usr/local/bin's.
    let dir = tempfile::tempdir().unwrap();
    let installed =
        unit.replace("ExecStart=/usr/local/bin/loosh-miner", concat!("ExecStart=", env!("CARGO_BIN_EXE_loosh-miner")));
    assert_ne!(installed, unit, "the unit starts /usr/local/bin/loosh-miner");
    let path = dir.path().join("loosh-miner.service");
    std::fs::write(&path, installed).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (scripts/install.sh --test installs systemd)");
    assert!(out.status.success() && out.stderr.is_empty(), "{}", text(&out));

    let stop: u64 = setting(&unit, "TimeoutStopSec").parse().unwrap();
    assert!(stop > DRAIN_SECS, "TimeoutStopSec={stop} cuts the drain");
    assert_eq!(setting(&unit, "KillSignal"), "SIGTERM");
    assert_eq!(setting(&unit, "Restart"), "on-failure");
    assert_eq!(setting(&unit, "StandardOutput"), "journal");
    assert_eq!(setting(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID", "reload is the miner's SIGHUP");
    // The miner reads the file itself (and re-reads it on reload); systemd puts nothing of it in
    // the environment, where it would be fixed and win over the file.
    assert!(setting(&unit, "ExecStart").ends_with(" --env-file /etc/loosh-miner/miner.env"), "{unit}");
    assert!(!unit.lines().any(|l| l.starts_with("EnvironmentFile")), "{unit}");
    // SIGTERM to the miner only; it stops its children when their challenges are answered.
    assert_eq!(setting(&unit, "KillMode"), "mixed");
    assert_eq!(setting(&unit, "RestartPreventExitStatus"), "78", "a configuration error is not restarted");
    assert_eq!(setting(&unit, "UMask"), "0077", "what the miner writes is its own");
}

#[test]
fn the_pm2_file_loads_and_outwaits_the_drain() {
    let out = Command::new("node")
        .arg("-e")
        .arg("const a = require(process.argv[1]).apps[0]; console.log(JSON.stringify(a))")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ecosystem.config.js"))
        .output()
        .expect("node runs (scripts/install.sh --test installs it for the chain)");
    assert!(out.status.success(), "{}", text(&out));
    let app: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(app["name"], "loosh-miner");
    assert_eq!(app["interpreter"], "none");
    assert!(app["kill_timeout"].as_u64().unwrap() > DRAIN_SECS * 1000, "{app}");
    assert!(app["script"].as_str().unwrap().ends_with("target/release/loosh-miner"), "{app}");
    assert_eq!(app["treekill"], false, "the stop signal goes to the miner, not to its children: {app}");
    assert_eq!(app["stop_exit_codes"], serde_json::json!([78]), "a configuration error is not restarted: {app}");
}

#[test]
fn api_docs_are_off_by_default_and_served_offline_when_enabled() {
    let model = common::tiny_model();
    let off = MinerProcess::start(&model, true, &[]);
    for path in ["/openapi.json", "/docs", "/redoc"] {
        let res = off.get(path).unwrap();
        assert!(res.starts_with("HTTP/1.1 404"), "{path} is served by default:\n{res}");
    }
    drop(off);

    let on = MinerProcess::start(&model, true, &[("ENABLE_API_DOCS", "true")]);
    let res = on.get("/openapi.json").unwrap();
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let spec: serde_json::Value = serde_json::from_str(res.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    for path in ["/availability", "/fiber/public-key", "/fiber/key-exchange", "/fiber/challenge"] {
        assert!(spec["paths"][path].is_object(), "{path} is not documented");
    }
    for path in ["/docs", "/redoc"] {
        let page = on.get(path).unwrap();
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("text/html"), "{page}");
        assert!(!page.contains("https://") && !page.contains("http://"), "{path} fetches from elsewhere");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_show_each_allowed_validator_and_no_one_else() {
    let listed = Hotkey::ephemeral();
    let stranger = Hotkey::ephemeral();
    let miner = MinerProcess::start(&common::tiny_model(), true, &[("VALIDATOR_HOTKEYS", listed.ss58())]);
    let mut client = ValidatorClient::new(&miner.url, listed.clone());
    client.handshake().await.unwrap();
    for _ in 0..2 {
        client.challenge(&challenge_body("Say something.", 16, 0.7)).await.unwrap();
    }
    let mut intruder = ValidatorClient::new(&miner.url, stranger.clone());
    assert!(intruder.handshake().await.is_err(), "a stranger is refused");

    let metrics = miner.get_ops("/metrics").unwrap();
    let ok = format!("loosh_validator_challenges_total{{outcome=\"ok\",validator=\"{}\"}}", listed.ss58());
    assert_eq!(miner.metric(&ok), Some(2.0), "{metrics}");
    assert!(metrics
        .contains(&format!("loosh_validator_last_key_exchange_timestamp_seconds{{validator=\"{}\"}}", listed.ss58())));
    assert!(!metrics.contains(stranger.ss58()), "a refused hotkey got a series of its own");

    let dir = tempfile::tempdir().unwrap();
    let port = miner.ops_url.rsplit(':').next().unwrap().to_string();
    let out = run_miner(dir.path(), &["status"], &[("METRICS_PORT", &port)]);
    assert!(out.status.success(), "{}", text(&out));
    let table = text(&out);
    let row = table.lines().find(|l| l.contains(listed.ss58())).unwrap_or_else(|| panic!("no row:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // HOTKEY STAKE KEY-EXCHANGE(2 words) LAST-CHALLENGE(2 words) OK ERR P50
    assert_eq!((cols[1], cols[6], cols[7]), ("-", "2", "0"), "{table}");
    assert!(cols[8].ends_with('s'), "a p50 in seconds: {table}");
    assert!(!table.contains(stranger.ss58()), "{table}");
    let worker = table.lines().find(|l| l.trim_start().starts_with("cpu0")).unwrap_or_else(|| panic!("{table}"));
    assert!(worker.contains(" cpu ") && worker.contains("Ready"), "{worker}");
    assert!(table.contains("not connected (a --dev node"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_allow_list_and_log_level_keeps_keys_and_names_what_needs_a_restart() {
    let (a, b) = (Hotkey::ephemeral(), Hotkey::ephemeral());
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join(".env");
    std::fs::write(&env, format!("VALIDATOR_HOTKEYS={}\nLOG_LEVEL=INFO\n", a.ss58())).unwrap();
    let miner = MinerProcess::start_in(&common::tiny_model(), true, &[], dir.path());

    let mut va = ValidatorClient::new(&miner.url, a.clone());
    va.handshake().await.unwrap();
    let mut vb = ValidatorClient::new(&miner.url, b.clone());
    assert!(vb.handshake().await.is_err(), "b is not on the list yet");
    assert!(!miner.log.lock().unwrap().iter().any(|l| l.contains("DEBUG")));

    // The operator adds b, turns on debug logs and changes a setting that needs a restart.
    std::fs::write(
        &env,
        format!("VALIDATOR_HOTKEYS={},{}\nLOG_LEVEL=DEBUG\nMAX_BODY_BYTES=4096\n", a.ss58(), b.ss58()),
    )
    .unwrap();
    let seen = miner.log.lock().unwrap().len();
    miner.signal("HUP");
    let line = miner.wait_for_log("configuration reloaded", seen);
    assert!(line.contains("LOG_LEVEL") && line.contains("VALIDATOR_HOTKEYS"), "{line}");
    let warn = miner.wait_for_log("applied only at the next restart", seen);
    assert!(warn.contains("MAX_BODY_BYTES"), "{warn}");

    vb.handshake().await.expect("b is allowed after the reload");
    // a's key survived the reload: no re-handshake needed.
    va.challenge(&challenge_body("Say something.", 16, 0.7)).await.expect("a's key is still live");
    assert!(miner.log.lock().unwrap().iter().skip(seen).any(|l| l.contains("DEBUG")), "LOG_LEVEL=DEBUG applied");

    // Taking a off the list takes away its key as well as its admission.
    std::fs::write(&env, format!("VALIDATOR_HOTKEYS={}\n", b.ss58())).unwrap();
    let seen = miner.log.lock().unwrap().len();
    miner.signal("HUP");
    miner.wait_for_log("configuration reloaded", seen);
    assert!(va.challenge(&challenge_body("Say something.", 16, 0.7)).await.is_err(), "a was removed");
    vb.challenge(&challenge_body("Say something.", 16, 0.7)).await.expect("b still served");

    // A configuration that does not load is refused whole; the miner keeps running as it was.
    std::fs::write(&env, format!("VALIDATOR_HOTKEYS={}\nCHALLENGE_DEADLINE_MS=70000\n", b.ss58())).unwrap();
    let seen = miner.log.lock().unwrap().len();
    miner.signal("HUP");
    let refused = miner.wait_for_log("reload refused", seen);
    assert!(refused.contains("CHALLENGE_DEADLINE_MS"), "{refused}");
    vb.challenge(&challenge_body("Say something.", 16, 0.7)).await.expect("still serving after a refused reload");

    // Denying b refuses it even though it is listed, and drops its key.
    std::fs::write(&env, format!("VALIDATOR_HOTKEYS={0}\nVALIDATOR_DENY_HOTKEYS={0}\n", b.ss58())).unwrap();
    let seen = miner.log.lock().unwrap().len();
    miner.signal("HUP");
    let line = miner.wait_for_log("configuration reloaded", seen);
    assert!(line.contains("VALIDATOR_DENY_HOTKEYS"), "{line}");
    assert!(vb.challenge(&challenge_body("Say something.", 16, 0.7)).await.is_err(), "b's key was dropped");
    assert!(vb.handshake().await.is_err(), "b is denied");
}

/// A SIGHUP applies a changed worker list: a new worker starts, a removed one finishes and stops,
/// a changed one is replaced; the others keep running, and the validator's key survives it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_replaces_workers_and_keeps_the_others_and_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model();
    let workers = dir.path().join("workers.json");
    let worker = |name: &str, parallel: u32| {
        format!(
            r#"{{"kind":"embedded","name":"{name}","device":"cpu","model":"{}","threads":1,"n_parallel":{parallel}}}"#,
            model.display()
        )
    };
    std::fs::write(&workers, format!("[{}]", worker("w0", 1))).unwrap();
    std::fs::write(dir.path().join(".env"), format!("WORKERS_FILE={}\n", workers.display())).unwrap();
    let miner = MinerProcess::start_in(&model, true, &[], dir.path());
    let mut v = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    v.handshake().await.unwrap();
    v.challenge(&challenge_body("Say something.", 16, 0.7)).await.expect("w0 answers");

    let reload = |list: String| {
        std::fs::write(&workers, list).unwrap();
        let seen = miner.log.lock().unwrap().len();
        miner.signal("HUP");
        (seen, miner.wait_for_log("workers changed", seen))
    };
    let answered_by = |seen: usize, name: &str| miner.wait_for_log(&format!("challenge answered worker={name}"), seen);

    // A long challenge in flight on w0 (greedy: it runs for thousands of tokens).
    let long = {
        let mut v = v.clone();
        tokio::spawn(async move { v.challenge(&challenge_body("Tell me everything.", 6000, 0.0)).await })
    };
    miner.wait_for_log("worker=w0", 0);

    // Added: w1 starts beside w0.
    let (seen, line) = reload(format!("[{},{}]", worker("w0", 1), worker("w1", 1)));
    assert!(line.contains(r#"added=["w1"]"#) && line.contains("removed=[]"), "{line}");
    miner.wait_for_log("worker joined the schedule", seen);

    // Removed: w0 takes nothing new but finishes the long challenge; w1 answers meanwhile, with the
    // key made before both reloads.
    let (seen, line) = reload(format!("[{}]", worker("w1", 1)));
    assert!(line.contains(r#"removed=["w0"]"#) && line.contains("added=[]"), "{line}");
    v.challenge(&challenge_body("Say something.", 16, 0.7)).await.expect("w1 answers with the same key");
    answered_by(seen, "w1");
    let (reply, _) = long.await.unwrap().expect("the challenge in flight on the removed worker is answered");
    assert!(reply.usage.completion_tokens > 16, "{:?}", reply.usage);
    miner.wait_for_log("removed worker stopped", seen);

    // Changed: w1 gets two sequences; the old instance stops before the new one loads.
    let (seen, line) = reload(format!("[{}]", worker("w1", 2)));
    assert!(line.contains(r#"replaced=["w1"]"#), "{line}");
    miner.wait_for_log("starting its replacement", seen);
    let joined = miner.wait_for_log("worker joined the schedule", seen);
    assert!(joined.contains("parallel=2"), "{joined}");
    let seen = miner.log.lock().unwrap().len();
    v.challenge(&challenge_body("Say something.", 16, 0.7)).await.expect("the new w1 answers");
    answered_by(seen, "w1");
}

/// The pid in a `backend server started` line.
fn started_pid(line: &str) -> u32 {
    line.split("pid=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_command_gets_its_server_started_watched_restarted_and_stopped() {
    let port = common::free_port();
    let model = common::smollm2_model();
    let command = serde_json::json!([
        common::python(),
        "-m",
        "llama_cpp.server",
        "--host",
        "127.0.0.1",
        "--port",
        port.to_string(),
        "--n_threads",
        "1",
        "--n_ctx",
        "2048",
        "--model_alias",
        "smollm2",
        "--interrupt_requests",
        "false",
        "--model",
        model
    ]);
    let workers = serde_json::json!([{
        "kind": "openai", "name": "managed", "base_url": format!("http://127.0.0.1:{port}/v1"), "model": "smollm2",
        "n_parallel": 1, "command": command, "env": {"OMP_NUM_THREADS": "1"}
    }]);
    let miner = MinerProcess::start(&common::tiny_model(), true, &[("WORKERS", &workers.to_string())]);
    let first = started_pid(&miner.wait_for_log("backend server started", 0));
    miner.wait_for_log("backend server ready", 0);
    // Its output is in the miner's log, behind the worker's name.
    miner.wait_for_log("[managed] ", 0);

    let validator = Hotkey::ephemeral();
    let mut client = ValidatorClient::new(&miner.url, validator);
    client.handshake().await.unwrap();
    client.challenge(&challenge_body("Say hi.", 4, 0.0)).await.expect("answered through the managed server");
    miner.wait_for_log("worker=managed", 0);

    // The server dies: it is started again, with a new process.
    let seen = miner.log.lock().unwrap().len();
    assert!(Command::new("kill").args(["-9", &first.to_string()]).status().unwrap().success());
    miner.wait_for_log("backend server exited; restarting", seen);
    let second = started_pid(&miner.wait_for_log("backend server started", seen));
    assert_ne!(first, second);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    common::wait_for("the restarted server to answer", Duration::from_secs(120), || {
        let (http, url) = (http.clone(), format!("http://127.0.0.1:{port}/v1/models"));
        async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;

    // The miner's shutdown stops it.
    miner.signal("TERM");
    miner.wait_for_log("backend server stopped", seen);
    let proc = format!("/proc/{second}");
    common::wait_for("the server process to be gone", Duration::from_secs(10), || {
        let gone = !Path::new(&proc).exists();
        async move { gone }
    })
    .await;
}

/// Issue 33: a managed server's `command` given as one string is split as a shell splits it, so
/// a quoted argument (a chat template, a path with spaces) reaches the server whole. The "server"
/// here writes the arguments it was given and waits.
#[test]
fn a_quoted_argument_in_a_managed_servers_command_reaches_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("argv.json");
    let script = format!(
        "import json, sys, time; open('{}', 'w').write(json.dumps(sys.argv[1:])); time.sleep(600)",
        seen.to_str().unwrap()
    );
    let command = format!("{} -c \"{script}\" --chat-template \"{{{{ a b }}}}\" 'two words' plain", common::python());
    let workers = serde_json::json!([{
        "kind": "openai", "name": "managed", "base_url": format!("http://127.0.0.1:{}/v1", common::free_port()),
        "model": "m", "command": command, "ready_timeout_s": 600
    }]);
    let mut miner = ManagedOnly::start(dir.path(), &workers);
    let end = Instant::now() + Duration::from_secs(60);
    let argv: Vec<String> = loop {
        if let Some(v) = std::fs::read_to_string(&seen).ok().and_then(|t| serde_json::from_str(&t).ok()) {
            break v;
        }
        if let Ok(Some(status)) = miner.child.try_wait() {
            panic!("the miner exited ({status}) before starting its server:\n{}", miner.lines().join("\n"));
        }
        assert!(Instant::now() < end, "the managed server was never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(miner);
    assert_eq!(argv, ["--chat-template", "{{ a b }}", "two words", "plain"]);
}

/// The miner with only managed servers in `WORKERS` (no model; their workers wait for a
/// `/v1/models` that never answers), its stdout and stderr collected as lines decoded here, and
/// stopped (SIGTERM, then waited for) however the test ends.
struct ManagedOnly {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ManagedOnly {
    fn start(dir: &Path, workers: &serde_json::Value) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
            .arg("--dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("API_PORT", common::free_port().to_string())
            .env("METRICS_PORT", common::free_port().to_string())
            .env("WORKERS", workers.to_string())
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let sink = log.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    sink.lock().unwrap().push(String::from_utf8_lossy(&line).trim_end().to_string());
                    line.clear();
                }
            });
        }
        Self { child, log }
    }

    /// Waits (bounded) for a line containing `needle` among those from the `from`th on; returns it.
    fn wait_for_log(&mut self, needle: &str, from: usize) -> String {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().skip(from).find(|l| l.contains(needle)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the miner exited ({status}) before logging {needle:?}:\n{}", self.lines().join("\n"));
            }
            assert!(Instant::now() < end, "the miner never logged {needle:?}:\n{}", self.lines().join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, and its exit status once it has stopped its servers.
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Drop for ManagedOnly {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Issue 33: a managed server's secrets, odd bytes and endless lines. The server is started
/// with an API key and an HF token on its command line and a token in its environment, echoes
/// them as servers do (its argv, an argparse `Namespace`, its environment), writes a line that is
/// not UTF-8 and a 100 KB line, then goes on logging. The miner's log shows none of the secrets,
/// keeps forwarding past the odd line, and cuts the long one at 8 KiB.
#[test]
fn a_managed_servers_secrets_odd_bytes_and_endless_lines_stay_out_of_the_miners_log() {
    let script = r#"
import os, sys, time
print('argv:', sys.argv, flush=True)
sys.stderr.write('Namespace(api_key=%r, port=1)\n' % sys.argv[2])
sys.stderr.flush()
print('env token:', os.environ['HF_TOKEN'], flush=True)
sys.stdout.buffer.write(b'odd bytes \xff\xfe here\n' + b'x' * 100000 + b'\n')
sys.stdout.buffer.flush()
print('still forwarding after the odd lines', flush=True)
time.sleep(600)
"#;
    let command = serde_json::json!([
        common::python(),
        "-c",
        script,
        "--api-key",
        "sekrit-value",
        "--hf-token=sekrit-token",
        "--port",
        "1"
    ]);
    let workers = serde_json::json!([{
        "kind": "openai", "name": "managed", "base_url": format!("http://127.0.0.1:{}/v1", common::free_port()),
        "model": "m", "command": command, "env": {"HF_TOKEN": "sekrit-env"}, "ready_timeout_s": 600
    }]);
    let dir = tempfile::tempdir().unwrap();
    let mut miner = ManagedOnly::start(dir.path(), &workers);
    let started = miner.wait_for_log("backend server started", 0);
    assert!(started.contains("--api-key *** --hf-token=*** --port 1"), "the command, its secrets masked: {started}");
    miner.wait_for_log("[managed] argv:", 0);
    miner.wait_for_log("[managed] Namespace(api_key=", 0);
    miner.wait_for_log("[managed] env token: ***", 0);
    miner.wait_for_log("[managed] still forwarding after the odd lines", 0);

    let lines = miner.lines();
    let odd = lines.iter().find(|l| l.contains("[managed] odd bytes")).expect("the odd line is forwarded");
    assert!(odd.contains("odd bytes \u{fffd}\u{fffd} here"), "decoded lossily: {odd}");
    let long = lines.iter().find(|l| l.contains("[managed] xxxx")).expect("the long line is forwarded, cut");
    assert!(long.contains("[line cut: 91808 more bytes dropped]"), "{}", &long[long.len().saturating_sub(80)..]);
    assert_eq!(long.matches('x').count(), 8 * 1024, "8 KiB of it is shown");
    for line in &lines {
        assert!(!line.contains("sekrit"), "a secret reached the log: {line}");
        assert!(line.len() < 8 * 1024 + 256, "a line of {} bytes reached the log", line.len());
    }
}

/// Issue 33: a managed server whose leader dies leaves nothing behind. The leader starts a child
/// that ignores SIGTERM, then is killed with SIGKILL (which reaches it alone): the miner kills
/// what is left of its process group, restarts the server, and on shutdown does the same for the
/// new leader's child, which SIGTERM to the group did not end.
#[test]
fn what_a_managed_servers_leader_leaves_in_its_process_group_dies_with_it() {
    let script = "(trap '' TERM; exec sleep 1000) & echo \"grandchild $!\"; exec sleep 1000";
    let workers = serde_json::json!([{
        "kind": "openai", "name": "managed", "base_url": format!("http://127.0.0.1:{}/v1", common::free_port()),
        "model": "m", "command": ["sh", "-c", script], "ready_timeout_s": 600
    }]);
    let grandchild = |line: &str| -> u32 {
        line.rsplit("grandchild ").next().and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let dir = tempfile::tempdir().unwrap();
    let mut miner = ManagedOnly::start(dir.path(), &workers);
    let leader = started_pid(&miner.wait_for_log("backend server started", 0));
    let first = grandchild(&miner.wait_for_log("[managed] grandchild ", 0));
    assert!(common::process_alive(first), "the server's child runs");

    let seen = miner.lines().len();
    assert!(Command::new("kill").args(["-KILL", &leader.to_string()]).status().unwrap().success());
    wait_until("the dead leader's child to be killed", || !common::process_alive(first));
    miner.wait_for_log("left processes behind; killed its process group", seen);

    // Restarted; the miner's shutdown ends the new leader's child too, though it ignores SIGTERM.
    miner.wait_for_log("backend server exited; restarting", seen);
    let second = grandchild(&miner.wait_for_log("[managed] grandchild ", seen));
    assert!(second != first && common::process_alive(second));
    assert!(miner.stop().success(), "a clean exit after SIGTERM");
    wait_until("the restarted leader's child to be killed at shutdown", || !common::process_alive(second));
}

/// Polls `check` (bounded) from a plain thread: for a state change the test caused.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn config_reads_what_python_dotenv_reads_and_names_each_unreadable_line_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Hotkey::ephemeral(), Hotkey::ephemeral());
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "VALIDATOR_HOTKEYS={}, {}\nLLAMA_THREADS=3 # three\nOPENAI_API_KEY=\"sk-secret-value\nBAD LINE=sk-another-secret\n",
            a.ss58(),
            b.ss58()
        ),
    )
    .unwrap();
    let out = run_miner(dir.path(), &["config"], &[]);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("with 2 static hotkeys"), "`a, b` is both hotkeys: {printed}");
    assert!(printed.contains(", 3 threads,"), "{printed}");
    assert!(printed.contains("unreadable: .env line 3"), "{printed}");
    assert!(printed.contains("unreadable: .env line 4"), "{printed}");
    assert!(!printed.contains("secret"), "a line that cannot be read is named, never shown: {printed}");

    // A file named with --env-file is read instead of ./.env; the environment wins over it.
    let named = dir.path().join("miner.env");
    std::fs::write(&named, "LLAMA_THREADS=5\nNETUID=11\n").unwrap();
    let out = run_miner(dir.path(), &["--env-file", named.to_str().unwrap(), "config"], &[("NETUID", "12")]);
    let printed = text(&out);
    assert!(printed.contains(", 5 threads,") && printed.contains("netuid 12 "), "{printed}");
    assert!(printed.contains("with 0 static hotkeys"), "./.env is not read beside --env-file: {printed}");
    // A named file that is not there is a configuration error.
    let out = run_miner(dir.path(), &["config"], &[("ENV_FILE", "/nonexistent/miner.env")]);
    assert!(!out.status.success() && text(&out).contains("ENV_FILE"), "{}", text(&out));
}

#[test]
fn a_bare_key_after_a_value_unsets_it_as_python_dotenv_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "NETUID=11\nNETUID\nSUBTENSOR_NETWORK=test\n").unwrap();
    let out = run_miner(dir.path(), &["config"], &[]);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("netuid 78 "), "the bare NETUID leaves the default: {printed}");
}

/// Exit status and output of `loosh-miner --dev` (no wallet, no chain) with `vars`.
fn start_dev(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut vars = vars.to_vec();
    vars.push(("METRICS_PORT", "off"));
    let out = run_miner(dir.path(), &["--dev"], &vars);
    (out.status.code(), text(&out))
}

#[test]
fn a_log_file_that_cannot_be_opened_is_a_configuration_error_naming_log_file_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    // Its directory is a regular file: no restart can create the log there.
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let log_file = blocker.join("miner.log");
    let out = run_miner(dir.path(), &[], &[("LOG_FILE", log_file.to_str().unwrap())]);
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(78), "{printed}");
    assert!(printed.contains(&format!("LOG_FILE=\"{}\"", log_file.display())), "{printed}");
    assert!(!printed.contains("Some("), "the path, not a Rust Option: {printed}");
}

#[test]
fn an_api_host_this_machine_does_not_have_exits_78_a_port_in_use_exits_1_to_be_retried() {
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): no host has it.
    let (code, printed) = start_dev(&[("API_HOST", "192.0.2.1"), ("API_PORT", "8000")]);
    assert_eq!(code, Some(78), "{printed}");
    assert!(printed.contains("API_PORT=8000: cannot listen on 192.0.2.1:8000"), "{printed}");

    // Held by another process (the Python miner not yet stopped, say): it may let go; systemd
    // and PM2 restart on exit 1.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let (code, printed) = start_dev(&[("API_HOST", "127.0.0.1"), ("API_PORT", &port)]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains(&format!("API_PORT={port}: cannot listen on 127.0.0.1:{port}")), "{printed}");
}

#[test]
fn llama_threads_default_to_the_cpus_this_process_may_use_not_the_hosts_cores() {
    let dir = tempfile::tempdir().unwrap();
    let threads = |taskset: Option<&str>| {
        let mut cmd = match taskset {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(env!("CARGO_BIN_EXE_loosh-miner"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_loosh-miner")),
        };
        cmd.arg("config").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(dir.path());
        let out = cmd.output().expect("taskset runs (util-linux)");
        let printed = text(&out);
        assert!(out.status.success(), "{printed}");
        let n =
            printed.split(" threads,").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse::<usize>().ok());
        n.unwrap_or_else(|| panic!("no thread count in {printed}"))
    };
    let unpinned = threads(None);
    assert!(unpinned >= 1);
    // One CPU allowed (a cgroup quota or affinity mask of one): one thread, however many cores.
    assert_eq!(threads(Some("0")), 1);
    let allowed = std::thread::available_parallelism().unwrap().get();
    if allowed >= 2 {
        assert_eq!(threads(Some("0,1")), 2.min(unpinned), "two CPUs allowed");
    }
}

#[test]
fn a_configuration_error_exits_78_and_a_missing_hotkey_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_miner(dir.path(), &[], &[("API_PORT", "eighty")]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("API_PORT"), "{}", text(&out));
    let out = run_miner(dir.path(), &[], &[("WALLET_PATH", dir.path().to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("not found"), "{}", text(&out));
}

#[test]
fn a_chain_outage_at_start_is_waited_out_serving_availability_false() {
    // A wallet that loads, and a chain port that nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let hotkeys = dir.path().join("miner/hotkeys");
    std::fs::create_dir_all(&hotkeys).unwrap();
    std::fs::write(hotkeys.join("miner"), format!(r#"{{"secretSeed":"0x{}"}}"#, "11".repeat(32))).unwrap();
    let closed = common::free_port();
    let port = common::free_port();
    let ops_port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("WALLET_PATH", dir.path())
        .env("SUBTENSOR_ADDRESS", format!("ws://127.0.0.1:{closed}"))
        .env("MODEL_PATH", common::tiny_model())
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", port.to_string())
        .env("METRICS_PORT", ops_port.to_string())
        .env("LLAMA_THREADS", "1")
        .env("MAX_MODEL_LEN", "2048")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        use std::io::BufRead;
        let (stdout, sink) = (child.stdout.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
    }
    let retries = || log.lock().unwrap().iter().filter(|l| l.contains("chain unreachable at start; retrying")).count();
    let end = Instant::now() + Duration::from_secs(60);
    let ops = format!("127.0.0.1:{ops_port}");
    // Retrying past the old give-up point (four tries), the worker loaded, and still unavailable.
    loop {
        let healthy =
            loosh_miner::client::ops::get(&ops, "/health", Duration::from_secs(2)).is_ok_and(|b| b.contains("Ready"));
        if retries() >= 5 && healthy {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the miner exited:\n{}", log.lock().unwrap().join("\n"));
        assert!(Instant::now() < end, "no retries while serving:\n{}", log.lock().unwrap().join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let availability =
        loosh_miner::client::ops::get(&format!("127.0.0.1:{port}"), "/availability", Duration::from_secs(5)).unwrap();
    assert!(availability.contains("\"available\":false"), "{availability}");
    // SAFETY: kill takes a pid and a signal number; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a stop while waiting for the chain is a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_re_reads_the_named_file_and_says_when_nothing_changed() {
    let validator = Hotkey::ephemeral();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("miner.env");
    std::fs::write(&file, format!("LOG_LEVEL=INFO\nVALIDATOR_HOTKEYS={}\n", validator.ss58())).unwrap();
    let env_file = file.to_str().unwrap().to_string();
    // As the unit runs it: the file named, nothing of it in the environment.
    let miner = MinerProcess::start_in(&common::tiny_model(), true, &[("ENV_FILE", &env_file)], dir.path());
    let mut v = ValidatorClient::new(&miner.url, validator.clone());
    v.handshake().await.expect("the listed validator is admitted");
    let other = Hotkey::ephemeral();
    assert!(ValidatorClient::new(&miner.url, other.clone()).handshake().await.is_err(), "not listed yet");

    let seen = miner.log.lock().unwrap().len();
    miner.signal("HUP");
    let line = miner.wait_for_log("nothing changed", seen);
    assert!(line.contains(&env_file), "{line}");

    // Edited as an operator edits it: a quoted list with a comment, python-dotenv style.
    std::fs::write(
        &file,
        format!("LOG_LEVEL=DEBUG\nVALIDATOR_HOTKEYS=\"{}, {}\"  # two\n", validator.ss58(), other.ss58()),
    )
    .unwrap();
    let seen = miner.log.lock().unwrap().len();
    miner.signal("HUP");
    let line = miner.wait_for_log("configuration reloaded", seen);
    assert!(line.contains("LOG_LEVEL") && line.contains("VALIDATOR_HOTKEYS") && line.contains(&env_file), "{line}");
    let mut stranger = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    assert!(stranger.handshake().await.is_err(), "the list from the file applies");
    ValidatorClient::new(&miner.url, other).handshake().await.expect("both listed hotkeys are allowed");
    v.challenge(&challenge_body("Say something.", 8, 0.7)).await.expect("the listed validator's key survived");
    assert!(miner.log.lock().unwrap().iter().skip(seen).any(|l| l.contains("DEBUG")), "LOG_LEVEL=DEBUG applied");

    let seen = miner.log.lock().unwrap().len();
    miner.signal("HUP");
    miner.wait_for_log("nothing changed", seen);
    assert!(!miner.log.lock().unwrap().iter().skip(seen).any(|l| l.contains("configuration reloaded")));
}

#[test]
fn health_is_503_once_no_worker_has_been_ready_for_the_grace_period() {
    // A worker whose server never answers: never ready.
    let dead = format!("http://127.0.0.1:{}/v1", common::free_port());
    let workers = format!(r#"[{{"kind":"openai","name":"gone","base_url":"{dead}","model":"m"}}]"#);
    let port = common::free_port();
    let ops_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |grace: &str| {
        Command::new(env!("CARGO_BIN_EXE_loosh-miner"))
            .arg("--dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("API_HOST", "127.0.0.1")
            .env("API_PORT", port.to_string())
            .env("METRICS_PORT", ops_port.to_string())
            .env("WORKERS", &workers)
            .env("HEALTH_GRACE_SECONDS", grace)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let ops = format!("127.0.0.1:{ops_port}");
    let ask = |ops: &str| loosh_miner::client::ops::get(ops, "/health", Duration::from_secs(2));
    let answered = |ops: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match ask(ops) {
                Err(loosh_miner::client::ops::OpsError::Connect { .. }) => {}
                other => return other,
            }
            assert!(Instant::now() < end, "/health never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Within the grace period: 200, though nothing is ready yet.
    let mut within = spawn("3600");
    let body = answered(&ops).expect("200 within the grace period");
    assert!(body.contains("\"status\":\"ok\"") && body.contains("gone"), "{body}");
    within.kill().unwrap();
    within.wait().unwrap();
    // Past it: 503, which `loosh-miner health` (Docker's HEALTHCHECK) turns into a failure.
    let mut past = spawn("0");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match answered(&ops) {
            Err(loosh_miner::client::ops::OpsError::Response { detail, .. }) if detail == "HTTP 503" => break,
            other => assert!(Instant::now() < end, "never 503: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run_miner(dir.path(), &["health"], &[("METRICS_PORT", &ops_port.to_string())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("HTTP 503"), "{}", text(&out));
    past.kill().unwrap();
    past.wait().unwrap();
}

#[test]
fn a_metrics_port_in_use_is_named_in_the_error_and_the_default_is_not_node_exporters() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_miner(dir.path(), &["config"], &[]);
    assert!(text(&out).contains("/metrics on 127.0.0.1:8478"), "{}", text(&out));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let api = common::free_port().to_string();
    let out = run_miner(
        dir.path(),
        &["--dev"],
        &[
            ("METRICS_PORT", &port),
            ("API_HOST", "127.0.0.1"),
            ("API_PORT", &api),
            ("MODEL_PATH", common::tiny_model().to_str().unwrap()),
            ("LLAMA_THREADS", "1"),
            ("MAX_MODEL_LEN", "2048"),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("METRICS_PORT={port}: cannot listen")), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_whole_process_group_drains_a_challenge_in_an_engine_child_and_exits_0() {
    let mut miner = MinerProcess::start_grouped(&common::tiny_model(), true, &[("ENGINE_PROCESS", "always")]);
    let children = common::children_of(miner.pid());
    assert!(!children.is_empty(), "ENGINE_PROCESS=always runs the engine in a child");
    let mut v = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    v.handshake().await.unwrap();
    let long = tokio::spawn(async move { v.challenge(&challenge_body("Tell me everything.", 6000, 0.0)).await });
    // Generating (greedy, it runs to the context's end: seconds on one thread).
    let m = &miner;
    common::wait_for("a challenge in flight", Duration::from_secs(30), move || async move {
        m.metric("loosh_challenges_in_flight") == Some(1.0)
    })
    .await;
    // What systemd's default KillMode, PM2's treekill and Ctrl-C do: every process of the group.
    // SAFETY: kill takes a process group id (negated) and a signal number; the miner leads it.
    assert_eq!(unsafe { libc::kill(-(miner.pid() as i32), libc::SIGTERM) }, 0);
    let (reply, _) = long.await.unwrap().expect("the challenge in flight is answered");
    assert!(reply.usage.completion_tokens > 16, "{:?}", reply.usage);
    let status = miner.wait_exit(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "{}", miner.log.lock().unwrap().join("\n"));
    for pid in children {
        assert!(!common::process_alive(pid), "engine child {pid} outlived the node");
    }
}

/// A Dockerfile's instructions, continuation lines joined (no Docker engine here to build them).
fn dockerfile(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("{}/docker/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty()) {
        let (body, continues) = match line.trim_end().strip_suffix('\\') {
            Some(b) => (b.to_string(), true),
            None => (line.to_string(), false),
        };
        if open {
            out.last_mut().unwrap().push_str(&body);
        } else {
            out.push(body);
        }
        open = continues;
    }
    out
}

#[test]
fn the_docker_images_build_locked_with_a_pinned_toolchain_and_the_readme_runs_them_with_init() {
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let steps = dockerfile(name);
        let position = |needle: &str| steps.iter().position(|s| s.contains(needle));
        let install = position("RUN scripts/install.sh").unwrap_or_else(|| panic!("{name}: install.sh"));
        let pin =
            position("rustup default \"$RUST_TOOLCHAIN\"").unwrap_or_else(|| panic!("{name}: no pinned toolchain"));
        let build = position("cargo build --release --locked").unwrap_or_else(|| panic!("{name}: not --locked"));
        assert!(install < pin && pin < build, "{name}: install, pin, then build");
        let toolchain = steps.iter().find_map(|s| s.strip_prefix("ARG RUST_TOOLCHAIN=")).unwrap();
        assert!(toolchain.split('.').count() == 3, "{name}: a version, not a channel: {toolchain}");
        assert!(position("HEALTHCHECK").is_some_and(|i| steps[i].contains("\"loosh-miner\", \"health\"")));
        assert!(steps.iter().any(|s| s.starts_with("EXPOSE") && s.contains("8478")), "{name}: the metrics port");
        // The environment wins over the mounted .env: the image sets nothing an operator sets there.
        let env = steps.iter().filter(|s| s.starts_with("ENV ")).cloned().collect::<Vec<_>>().join(" ");
        for var in ["API_PORT", "METRICS_PORT", "METRICS_HOST"] {
            assert!(!env.contains(var), "{name} fixes {var}: {env}");
        }
    }
    let cuda = dockerfile("Dockerfile.cuda");
    let arches =
        cuda.iter().find_map(|s| s.strip_prefix("ARG CMAKE_CUDA_ARCHITECTURES=")).expect("stated architectures");
    for arch in ["80", "86", "89", "90"] {
        assert!(arches.contains(&format!("{arch}-real")), "{arches}");
    }
    assert!(
        cuda.iter().any(|s| s == "ENV CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES}"),
        "passed to the build"
    );
    assert!(cuda.iter().any(|s| s.contains("--features cuda")));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let run = readme.lines().find(|l| l.starts_with("docker run")).expect("a docker run in the README");
    assert!(run.contains(" --init ") && run.contains("--stop-timeout 100"), "{run}");
    assert!(readme.contains("pm2 stop loosh-inference-miner && pm2 delete"), "the PM2 switching step");
}

#[test]
fn quickstart_builds_for_cuda_when_nvcc_is_on_path_or_asked_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/quickstart.sh");
    let run = |path: &str, args: &[&str]| {
        let out = Command::new("/bin/bash")
            .arg(script)
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("QUICKSTART_DRY_RUN", "1")
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    // A PATH with only what the script needs besides bash's builtins (no nvcc, whatever the host has).
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::os::unix::fs::symlink("/usr/bin/dirname", tools.join("dirname")).unwrap();
    let system = tools.to_str().unwrap().to_string();
    let system = system.as_str();
    let (code, out) = run(system, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cargo build --release \n") || out.trim_end().ends_with("cargo build --release"), "{out}");
    // A CUDA toolkit on PATH (an executable named nvcc; the script only looks for it).
    let cuda = dir.path().join("cuda");
    std::fs::create_dir(&cuda).unwrap();
    let nvcc = cuda.join("nvcc");
    std::fs::write(&nvcc, "#!/bin/sh\necho 'Cuda compilation tools, release 12.8'\n").unwrap();
    std::fs::set_permissions(&nvcc, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755))
        .unwrap();
    let with_nvcc = format!("{}:{system}", cuda.display());
    let (code, out) = run(&with_nvcc, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cargo build --release --features cuda"), "{out}");
    let (_, out) = run(&with_nvcc, &["--cpu"]);
    assert!(!out.contains("--features cuda"), "{out}");
    // Asked for CUDA without the toolkit: an error, not a CPU build.
    let (code, out) = run(system, &["--cuda"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("nvcc is not on PATH"), "{out}");
}

#[test]
fn process_metrics_count_time_in_the_kernels_clock_ticks() {
    let miner = MinerProcess::start(&common::tiny_model(), true, &[]);
    let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf runs");
    let ticks: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let stat = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", miner.pid())).unwrap();
        let fields: Vec<f64> =
            stat.rsplit_once(')').unwrap().1.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
        // proc(5) numbering minus 3: utime 14, stime 15, starttime 22.
        (fields[11] + fields[12], fields[19])
    };
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        .unwrap();
    let (cpu_before, start) = stat();
    let cpu = miner.metric("process_cpu_seconds_total").unwrap();
    let (cpu_after, _) = stat();
    assert!(cpu_before / ticks <= cpu && cpu <= cpu_after / ticks, "{cpu_before} <= {cpu} * {ticks} <= {cpu_after}");
    let started = miner.metric("process_start_time_seconds").unwrap();
    assert!((started - (boot + start / ticks)).abs() < 1.0 / ticks, "{started} vs {}", boot + start / ticks);
}

/// The real binary under a crash loop (a `test-hooks` build: `POST /test/crash/{actor}` on the
/// operator's address, and `LOOSH_TEST_MAX_RESTARTS` for a restart policy reached in moments). A
/// crashed scheduler is restarted and the node answers challenges again; once it crashes past
/// the policy's intensity, the node says why and exits 70 (EX_SOFTWARE), which systemd's
/// `Restart=on-failure` restarts.
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_crashing_past_its_restart_intensity_stops_the_node_with_exit_70() {
    let mut miner = MinerProcess::start(&common::tiny_model(), true, &[("LOOSH_TEST_MAX_RESTARTS", "1")]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let crash = format!("{}/test/crash/scheduler", miner.ops_url);
    let mut client = ValidatorClient::new(&miner.url, Hotkey::ephemeral());
    client.handshake().await.unwrap();
    let body = challenge_body("Say something.", 4, 0.7);
    assert!(client.challenge_once(&body).await.is_ok());

    let seen = miner.log.lock().unwrap().len();
    assert_eq!(http.post(&crash).send().await.unwrap().status(), 200);
    miner.wait_for_log("restarted", seen);
    let (reply, _) = client.challenge_once(&body).await.expect("200 from the restarted scheduler");
    assert!(reply.usage.completion_tokens >= 1);

    let seen = miner.log.lock().unwrap().len();
    assert_eq!(http.post(&crash).send().await.unwrap().status(), 200);
    let status = miner.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(70), "{status}");
    let said = miner.log.lock().unwrap()[seen..].join("\n");
    assert!(said.contains("giving up on a core actor"), "{said}");
    assert!(said.contains("exiting 70 for a restart"), "{said}");
}
