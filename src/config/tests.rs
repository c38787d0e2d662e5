//! The configuration's unit tests: defaults, the Python miner's meanings, and errors that name
//! the variable.

use super::*;

#[test]
fn defaults_match_the_python_miner() {
    let c = Config::from_source(&Source::from_pairs([])).unwrap();
    assert_eq!(c.api_port, 8000);
    assert_eq!(c.sessions.key_ttl, Duration::from_secs(3600));
    assert_eq!(c.fiber_handshake_timeout(), Duration::from_secs(30));
    assert_eq!(c.scheduler.max_in_flight, 10);
    assert!(c.enable_validator_whitelist);
    assert_eq!(c.llm_backend, LlmBackend::LlamaCppServer);
    assert!(c.wallet_path.ends_with("miner/hotkeys/miner"));
}

#[test]
fn the_python_miners_variables_mean_what_they_mean_there() {
    // `llamacpp` without a model file is a llama.cpp server, as in the Python miner.
    let c = Config::from_source(&Source::from_pairs([])).unwrap();
    assert_eq!(c.llm_backend, LlmBackend::LlamaCppServer);
    assert_eq!(c.llamacpp_api_base, "http://localhost:8080/v1");
    assert_eq!(c.vllm_api_base, "http://localhost:8001/v1");
    let c = Config::from_source(&Source::from_pairs([("MODEL_PATH", "/m.gguf")])).unwrap();
    assert_eq!(c.llm_backend, LlmBackend::Embedded);
    let diffs = c.python_differences().join("\n");
    assert!(diffs.contains("LLM_BACKEND=llamacpp with MODEL_PATH runs /m.gguf in this process"), "{diffs}");
    assert!(diffs.contains("MAX_MODEL_LEN=8192 is per challenge"), "{diffs}");
    let c = Config::from_source(&Source::from_pairs([
        ("LLM_BACKEND", "embedded"),
        ("MODEL_PATH", "/m.gguf"),
        ("LLAMA_PARALLEL", "1"),
    ]))
    .unwrap();
    assert!(c.python_differences().is_empty(), "{:?}", c.python_differences());
    let c = Config::from_source(&Source::from_pairs([
        ("LLM_BACKEND", "embedded"),
        ("LLAMA_PARALLEL", "4"),
        ("MAX_MODEL_LEN", "4096"),
    ]))
    .unwrap();
    assert!(c.python_differences()[0].contains("x LLAMA_PARALLEL=4 = 16384 tokens"), "{:?}", c.python_differences());
    // WALLET_PATH is the wallets directory.
    let c = Config::from_source(&Source::from_pairs([("WALLET_PATH", "/data/wallets"), ("WALLET_NAME", "w")])).unwrap();
    assert_eq!(c.wallet_path, PathBuf::from("/data/wallets/w/hotkeys/miner"));
    // The Challenge API is polled: no warning that it is not.
    let c = Config::from_source(&Source::from_pairs([("CHALLENGE_API_URL", "https://challenge.loosh.ai")])).unwrap();
    assert!(c.python_differences().iter().all(|d| !d.contains("CHALLENGE_API_URL")));
}

#[test]
fn a_backend_url_on_the_miners_own_port_is_refused() {
    let c = Config::from_source(&Source::from_pairs([
        ("LLM_BACKEND", "vllm"),
        ("VLLM_API_BASE", "http://localhost:8000/v1"),
    ]))
    .unwrap();
    let err = c.validate().unwrap_err();
    assert_eq!(err.var, "VLLM_API_BASE");
    assert!(err.expected.contains("API_PORT"), "{err}");
    let c = Config::from_source(&Source::from_pairs([
        ("LLAMACPP_API_BASE", "http://127.0.0.1:9000/v1"),
        ("API_PORT", "9000"),
    ]))
    .unwrap();
    assert_eq!(c.validate().unwrap_err().var, "LLAMACPP_API_BASE");
    let c = Config::from_source(&Source::from_pairs([("LLM_BACKEND", "vllm")])).unwrap();
    assert!(c.validate().is_ok());
}

#[test]
fn a_reload_sees_which_variables_changed() {
    let old = Source::from_pairs([("LOG_LEVEL", "INFO"), ("API_PORT", "8000"), ("X", "")]);
    let new = Source::from_pairs([("LOG_LEVEL", "DEBUG"), ("API_PORT", "8000"), ("VALIDATOR_HOTKEYS", "a")]);
    assert_eq!(old.changed(&new), ["LOG_LEVEL", "VALIDATOR_HOTKEYS"]);
    assert!(old.changed(&old).is_empty());
}

#[test]
fn bad_values_name_the_variable() {
    let err = Config::from_source(&Source::from_pairs([("API_PORT", "eighty")])).unwrap_err();
    assert_eq!(err.var, "API_PORT");
    assert!(err.to_string().starts_with("API_PORT=\"eighty\""));
    let err = Config::from_source(&Source::from_pairs([("ENABLE_VALIDATOR_WHITELIST", "maybe")])).unwrap_err();
    assert_eq!(err.var, "ENABLE_VALIDATOR_WHITELIST");
    let err = Config::from_source(&Source::from_pairs([("CHALLENGE_DEADLINE_MS", "70000")])).unwrap_err();
    assert_eq!(err.var, "CHALLENGE_DEADLINE_MS");
    let err = Config::from_source(&Source::from_pairs([("LLM_BACKEND", "gpt")])).unwrap_err();
    assert_eq!(err.var, "LLM_BACKEND");
}

#[test]
fn rate_limits_default_to_the_python_miner_and_bad_text_names_the_variable() {
    let c = Config::from_source(&Source::from_pairs([])).unwrap();
    assert_eq!(c.rate_limits, loosh_actors::settings::RateLimitSettings::default());
    assert_eq!(c.rate_limit_enabled, None);
    let err = Config::from_source(&Source::from_pairs([("RATE_LIMITS", "challenge=lots")])).unwrap_err();
    assert_eq!(err.var, "RATE_LIMITS");
    assert!(!c.allow_all_when_empty);
    let local = Config::from_source(&Source::from_pairs([("SUBTENSOR_NETWORK", "local")])).unwrap();
    assert!(!local.allow_all_when_empty, "allow-all is an explicit opt-in on every network");
}

#[test]
fn answering_settings_default_on_and_bad_values_name_the_variable() {
    let c = Config::from_source(&Source::from_pairs([])).unwrap();
    assert!(c.scheduler.admission.enabled && c.scheduler.hedge.enabled && !c.door.tool_call_text);
    assert_eq!(
        (c.scheduler.admission.min_useful_tokens, c.scheduler.hedge.factor, c.scheduler.hedge.min_after),
        (48, 3.0, Duration::from_millis(500))
    );
    assert_eq!(c.openai_max_model_len, None);
    let c =
        Config::from_source(&Source::from_pairs([("OPENAI_MAX_MODEL_LEN", "32768"), ("HEDGING", "false")])).unwrap();
    assert_eq!((c.openai_max_model_len, c.scheduler.hedge.enabled), (Some(32768), false));
    for (var, value) in
        [("HEDGE_AFTER_FACTOR", "0.5"), ("HEDGE_AFTER_FACTOR", "NaN"), ("TIME_AWARE_ADMISSION", "maybe")]
    {
        let err = Config::from_source(&Source::from_pairs([(var, value)])).unwrap_err();
        assert_eq!(err.var, var, "{value}");
    }
}

#[test]
fn engine_process_defaults_to_gpu_and_names_the_allowed_values_when_wrong() {
    let c = Config::from_source(&Source::from_pairs([])).unwrap();
    assert_eq!(c.engine_process, EngineProcessPolicy::Gpu);
    let c = Config::from_source(&Source::from_pairs([("ENGINE_PROCESS", "Always")])).unwrap();
    assert_eq!(c.engine_process, EngineProcessPolicy::Always);
    let err = Config::from_source(&Source::from_pairs([("ENGINE_PROCESS", "sometimes")])).unwrap_err();
    assert_eq!((err.var, err.expected.as_str()), ("ENGINE_PROCESS", "gpu, always or never"));
}

#[test]
fn the_engine_stall_limit_defaults_to_30_s_and_refuses_values_that_are_not_a_duration() {
    let c = Config::from_source(&Source::from_pairs([])).unwrap();
    assert_eq!(c.engine_stall_after, Duration::from_secs(30));
    let c = Config::from_source(&Source::from_pairs([("ENGINE_STALL_SECONDS", "2.5")])).unwrap();
    assert_eq!(c.engine_stall_after, Duration::from_millis(2500));
    for bad in ["0", "-1", "NaN", "inf", "soon"] {
        let err = Config::from_source(&Source::from_pairs([("ENGINE_STALL_SECONDS", bad)])).unwrap_err();
        assert_eq!(err.var, "ENGINE_STALL_SECONDS", "{bad}");
    }
}

#[test]
fn unsupported_but_accepted_variables_are_reported() {
    let c = Config::from_source(&Source::from_pairs([("AXON_PORT", "8089"), ("VLLM_MAX_NUM_SEQS", "64")])).unwrap();
    let names: Vec<_> = c.unused_settings.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["AXON_PORT", "VLLM_MAX_NUM_SEQS"]);
}

#[test]
fn validation_checks_hotkeys_and_urls_and_workers_need_a_model() {
    let c = Config::from_source(&Source::from_pairs([("VALIDATOR_HOTKEYS", "nope")])).unwrap();
    assert_eq!(c.validate().unwrap_err().var, "VALIDATOR_HOTKEYS");
    let c = Config::from_source(&Source::from_pairs([("CHALLENGE_API_URL", "ftp://x")])).unwrap();
    assert_eq!(c.validate().unwrap_err().var, "CHALLENGE_API_URL");
    let c = Config::from_source(&Source::from_pairs([])).unwrap();
    assert!(c.validate().is_ok());
    let c = Config::from_source(&Source::from_pairs([("LLM_BACKEND", "embedded")])).unwrap();
    assert_eq!(crate::config::workers::worker_specs(&c, &[]).unwrap_err().var, "MODEL_PATH");
    let c = Config::from_source(&Source::from_pairs([("MODEL_PATH", "/nonexistent.gguf")])).unwrap();
    assert_eq!(crate::config::workers::worker_specs(&c, &[]).unwrap_err().var, "MODEL_PATH");
}
