//! The configuration in words: the start-up log's summary, `loosh-miner config`'s output, and
//! where a `.env` means something here other than what it means to the Python miner.

use super::{Config, LlmBackend};

impl Config {
    /// Where this configuration means something other than the same `.env` means to the Python
    /// miner, each with what to set; logged at start as one line, so that an operator switching
    /// over reads every surprise at once.
    pub fn python_differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.workers.is_none() && self.llm_backend == LlmBackend::Embedded && self.llm_backend_name != "embedded" {
            if let Some(path) = &self.model_path {
                out.push(format!(
                    "LLM_BACKEND=llamacpp with MODEL_PATH runs {} in this process (the Python miner calls a llama.cpp server; unset MODEL_PATH to use the one at LLAMACPP_API_BASE={})",
                    path.display(),
                    self.llamacpp_api_base
                ));
            }
        }
        let embedded = match &self.workers {
            Some(list) => list.iter().any(|w| matches!(w, crate::config::workers::WorkerConfig::Embedded { .. })),
            None => self.llm_backend == LlmBackend::Embedded,
        };
        if embedded && self.llama_parallel != 1 {
            let per_worker = match self.llama_parallel {
                0 => "x the sequences each worker runs at once (chosen at load and logged)".to_string(),
                n => format!("x LLAMA_PARALLEL={n} = {} tokens", u64::from(self.max_model_len) * u64::from(n)),
            };
            out.push(format!(
                "MAX_MODEL_LEN={} is per challenge, as in vLLM; an embedded worker's context is MAX_MODEL_LEN {per_worker} (set LLAMA_PARALLEL=1 for one)",
                self.max_model_len
            ));
        }
        for (var, why) in &self.unused_settings {
            out.push(format!("{var} is not acted on: {why}"));
        }
        out
    }

    /// What `LLM_BACKEND` resolved to, in words: `embedded llama.cpp, model /m.gguf` or
    /// `llama.cpp server at http://localhost:8080/v1`.
    pub fn backend_description(&self) -> String {
        match self.llm_backend {
            LlmBackend::Embedded => format!(
                "embedded llama.cpp, model {}",
                self.model_path.as_ref().map_or("(MODEL_PATH unset)".into(), |p| p.display().to_string())
            ),
            LlmBackend::LlamaCppServer => format!("llama.cpp server at {}", self.llamacpp_api_base),
            LlmBackend::Vllm => format!("vLLM server at {}, model {}", self.vllm_api_base, self.default_model),
            LlmBackend::Ollama => format!("Ollama at {}, model {}", self.ollama_base_url, self.default_model),
        }
    }

    /// One line per setting for the start-up log; nothing secret lives in this struct.
    pub fn summary(&self) -> Vec<String> {
        vec![
            format!(
                "network: netuid {} on {} (wallet {})",
                self.chain.netuid,
                self.subtensor_network,
                self.wallet_path.display()
            ),
            format!(
                "http: {}:{} ({} workers, bodies up to {} bytes, /inference {})",
                self.api_host,
                self.api_port,
                self.http_workers,
                self.http.max_body_bytes,
                if self.http.inference_enabled { "on" } else { "off" }
            ),
            format!(
                "inference: {} (ctx {} per challenge, {} parallel, {} threads, {} GPU layers), {} explicit workers, deadline {} ms, max {} in flight",
                self.backend_description(),
                self.max_model_len,
                self.llama_parallel,
                self.llama_threads,
                self.llama_gpu_layers,
                self.workers.as_ref().map_or(0, Vec::len),
                self.door.deadline.as_millis(),
                self.scheduler.max_in_flight
            ),
            format!(
                "answering: time-aware admission {} (useful answer: {} tokens, wait cap {}, a sample per validator every {} min), hedging {} (after {} x median first token, at least {} ms), tool-call text {}, OpenAI context {}",
                if self.scheduler.admission.enabled { "on" } else { "off" },
                self.scheduler.admission.min_useful_tokens,
                self.scheduler.admission.max_wait.map_or("off".to_string(), |w| format!("{} ms", w.as_millis())),
                self.scheduler.admission.keep_sample_every.as_secs() / 60,
                if self.scheduler.hedge.enabled { "on" } else { "off" },
                self.scheduler.hedge.factor,
                self.scheduler.hedge.min_after.as_millis(),
                if self.door.tool_call_text { "on" } else { "off" },
                self.openai_max_model_len.map_or("as reported".to_string(), |n| format!("{n} tokens unless reported")),
            ),
            format!(
                "fiber: key ttl {} s (+{} s grace), replay window {} s + {} s timestamp skew",
                self.sessions.key_ttl.as_secs(),
                self.sessions.key_grace.as_secs(),
                self.fiber_handshake_timeout().as_secs(),
                self.door.max_timestamp_ahead.as_secs()
            ),
            format!(
                "limits: rate limits {} (per hotkey {}/min), {} RSA and {} signature slots, {} in flight per validator, bodies: key exchange {} B, read within {} s, headers within {} s, keep-alive {} s, {} connections; /metrics on {}",
                match self.rate_limit_enabled {
                    Some(false) => "off",
                    _ => "on",
                },
                self.rate_limits.per_hotkey,
                self.door.rsa_slots,
                self.door.verify_slots,
                self.door.max_in_flight_per_validator,
                self.http.max_key_exchange_bytes,
                self.http.body_read_timeout.as_secs(),
                self.http.header_read_timeout.as_secs(),
                self.http.keep_alive.as_secs(),
                self.http.max_connections,
                match &self.http.ops_listen {
                    Some((host, port)) => format!("{host}:{port}"),
                    None => "no address of its own".into(),
                }
            ),
            format!(
                "addresses: strict validator addresses {}, trusted proxies {:?}",
                if self.strict_validator_addresses { "on" } else { "off" },
                self.http.trusted_proxies
            ),
            format!(
                "validators: whitelist {} with {} static hotkeys",
                if self.enable_validator_whitelist { "enabled" } else { "DISABLED" },
                self.validator_hotkeys.len()
            ),
        ]
    }
}
