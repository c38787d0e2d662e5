//! Which backend workers the node runs: the `WORKERS` list when given, else what the Python
//! miner's variables imply (`LLM_BACKEND` with `VLLM_API_BASE` / `OLLAMA_BASE_URL` /
//! `LLAMACPP_API_BASE` / `MODEL_PATH`),
//! else one embedded worker per visible GPU, else one CPU worker.
//!
//! `WORKERS` (or the file named by `WORKERS_FILE`) is a JSON array, one object per worker:
//!
//! ```json
//! [
//!   {"kind": "embedded", "device": "gpu0", "model": "/models/qwen2.5-32b-q4_k_m.gguf", "n_ctx": 8192, "n_parallel": 4},
//!   {"kind": "embedded", "device": "cpu", "model": "/models/small.gguf", "threads": 8, "process": "child"},
//!   {"kind": "openai", "base_url": "http://10.0.0.7:8000/v1", "model": "Qwen/Qwen2.5-32B-Instruct", "n_parallel": 16}
//! ]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use loosh_actors::settings::EmbeddedSpec;
use loosh_actors::settings::EngineProcess;
use loosh_actors::settings::Secret;
use loosh_actors::settings::{with_v1, OpenAiSpec};
use loosh_actors::settings::{Device, EngineSpec, WorkerSpec};
use serde::Deserialize;

use crate::config::{Config, ConfigError, EngineProcessPolicy, LlmBackend};

/// Where one embedded worker's engine runs, overriding `ENGINE_PROCESS`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProcessChoice {
    /// A child process of its own.
    Child,
    /// A thread of the node.
    Thread,
}

/// One entry of `WORKERS`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum WorkerConfig {
    Embedded {
        #[serde(default)]
        name: Option<String>,
        /// `cpu`, `gpuN` or `N` (a GPU index as llama.cpp numbers them).
        #[serde(default)]
        device: Option<String>,
        /// GGUF path; defaults to `MODEL_PATH`.
        #[serde(default)]
        model: Option<PathBuf>,
        #[serde(default)]
        n_ctx: Option<u32>,
        #[serde(default)]
        n_parallel: Option<u32>,
        #[serde(default)]
        threads: Option<i32>,
        #[serde(default)]
        gpu_layers: Option<u32>,
        /// Reuse cached KV for repeated prompt prefixes (default true).
        #[serde(default)]
        prefix_cache: Option<bool>,
        /// `child` or `thread`; defaults to what `ENGINE_PROCESS` says for this device.
        #[serde(default)]
        process: Option<ProcessChoice>,
    },
    #[serde(alias = "openai-compatible")]
    Openai {
        #[serde(default)]
        name: Option<String>,
        base_url: String,
        /// Served model name; defaults to `DEFAULT_MODEL`.
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        n_parallel: Option<u32>,
        #[serde(default)]
        api_key: Option<Secret>,
        /// The server's context length when its `GET /models` does not report one; defaults to
        /// `OPENAI_MAX_MODEL_LEN`.
        #[serde(default)]
        max_model_len: Option<u32>,
        /// The command that serves it, started and watched by the miner (`managed_server`): a
        /// string split as a POSIX shell splits it (quotes and backslashes), or an argv array.
        #[serde(default)]
        command: Option<CommandLine>,
        /// Environment for `command`, over the miner's own (`CUDA_VISIBLE_DEVICES`).
        #[serde(default)]
        env: Option<std::collections::BTreeMap<String, String>>,
        /// Seconds to wait for the server's `/v1/models` at start (default 900: a large model).
        #[serde(default)]
        ready_timeout_s: Option<u64>,
    },
}

/// A `command`: `"vllm serve Qwen/Qwen2.5-7B-Instruct --port 8101"` or `["vllm", "serve", ...]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CommandLine {
    Line(String),
    Argv(Vec<String>),
}

impl CommandLine {
    /// The argv, as `sh` would split the line (`--chat-template "a b"` is one argument); `None`
    /// for a line a shell could not split (an unclosed quote).
    fn argv(&self) -> Option<Vec<String>> {
        match self {
            Self::Line(s) => shlex::split(s),
            Self::Argv(v) => Some(v.clone()),
        }
    }
}

/// The backend servers the miner runs itself: `openai` workers that carry a `command`.
pub fn managed_servers(cfg: &Config) -> Result<Vec<crate::managed_server::ServerSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, w) in cfg.workers.iter().flatten().enumerate() {
        if let WorkerConfig::Openai { name, base_url, command: Some(command), env, ready_timeout_s, .. } = w {
            let worker = name.clone().unwrap_or_else(|| format!("openai{i}"));
            let argv = command.argv().ok_or_else(|| ConfigError {
                var: "WORKERS",
                value: format!("the command of worker {worker}"),
                expected: "a command line a shell can split (a quote is left open)".into(),
            })?;
            if argv.is_empty() {
                return Err(ConfigError {
                    var: "WORKERS",
                    value: String::new(),
                    expected: "a non-empty command".into(),
                });
            }
            out.push(crate::managed_server::ServerSpec {
                worker,
                argv,
                env: env.clone().unwrap_or_default(),
                base_url: with_v1(base_url),
                ready_timeout: Duration::from_secs(ready_timeout_s.unwrap_or(900)),
            });
        }
    }
    Ok(out)
}

/// What a `WORKERS` error shows of the text: nothing of it, since it may hold an `api_key` and
/// the error is printed and logged; its length says which text was read.
fn withheld(text: &str) -> String {
    format!("<{} bytes, not shown: the worker list may hold an api_key>", text.len())
}

/// serde_json's message for a bad `WORKERS`, its quoted values withheld: `invalid type: string
/// "sk-…", expected u32` must not print the key a misplaced field holds. Field names, which serde
/// quotes with backticks, and the line and column stay.
fn redacted(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                out.push('"');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// Parses the `WORKERS` JSON text.
pub fn parse_workers(text: &str) -> Result<Vec<WorkerConfig>, ConfigError> {
    let list: Vec<WorkerConfig> = serde_json::from_str(text).map_err(|e| ConfigError {
        var: "WORKERS",
        value: withheld(text),
        expected: format!("a JSON array of workers (see env.example): {}", redacted(&e)),
    })?;
    if list.is_empty() {
        return Err(ConfigError { var: "WORKERS", value: withheld(text), expected: "at least one worker".into() });
    }
    Ok(list)
}

fn parse_device(text: Option<&str>) -> Result<Option<usize>, ConfigError> {
    match text.map(|t| t.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(t) if t == "cpu" => Ok(None),
        Some(t) => {
            t.trim_start_matches("gpu").trim_start_matches("cuda").trim_start_matches(':').parse().map(Some).map_err(
                |_| ConfigError { var: "WORKERS", value: t.clone(), expected: "device is cpu, gpuN or N".into() },
            )
        }
    }
}

/// The worker specs for this configuration. `gpus` are the GPUs llama.cpp sees (empty on CPU builds).
pub fn worker_specs(cfg: &Config, gpus: &[(usize, String)]) -> Result<Vec<WorkerSpec>, ConfigError> {
    let embedded = |name: String,
                    device: Option<usize>,
                    model: Option<PathBuf>,
                    n_ctx: Option<u32>,
                    n_parallel: Option<u32>,
                    threads: Option<i32>,
                    gpu_layers: Option<u32>,
                    prefix_cache: Option<bool>,
                    process: Option<ProcessChoice>|
     -> Result<WorkerSpec, ConfigError> {
        let model_path = model.or_else(|| cfg.model_path.clone()).ok_or(ConfigError {
            var: "MODEL_PATH",
            value: String::new(),
            expected: "the path of a GGUF model file (embedded workers need one)".into(),
        })?;
        if !model_path.is_file() {
            return Err(ConfigError {
                var: "MODEL_PATH",
                value: model_path.display().to_string(),
                expected: "an existing GGUF file".into(),
            });
        }
        let in_child = match (process, cfg.engine_process) {
            (Some(choice), _) => choice == ProcessChoice::Child,
            (None, EngineProcessPolicy::Gpu) => device.is_some(),
            (None, EngineProcessPolicy::Always) => true,
            (None, EngineProcessPolicy::Never) => false,
        };
        Ok(WorkerSpec {
            name,
            device: device.map_or(Device::Cpu, |d| Device::Gpu(d as u32)),
            process: if in_child {
                EngineProcess::Child { exe: cfg.engine_exe.clone() }
            } else {
                EngineProcess::Thread
            },
            engine: EngineSpec::Embedded(EmbeddedSpec {
                model_path,
                n_ctx: n_ctx.unwrap_or(cfg.max_model_len),
                threads: threads.unwrap_or(cfg.llama_threads),
                gpu_layers: match device {
                    Some(_) => gpu_layers.unwrap_or(if cfg.llama_gpu_layers == 0 { 999 } else { cfg.llama_gpu_layers }),
                    None => gpu_layers.unwrap_or(cfg.llama_gpu_layers),
                },
                gpu_device: device,
                n_batch: cfg.llama_batch,
                n_parallel: n_parallel.unwrap_or(cfg.llama_parallel),
                prefix_cache: prefix_cache.unwrap_or(true),
                stall_after: cfg.engine_stall_after,
            }),
        })
    };
    let openai = |name: String,
                  base_url: &str,
                  model: Option<String>,
                  n_parallel: Option<u32>,
                  api_key: Option<Secret>,
                  max_model_len: Option<u32>|
     -> Result<WorkerSpec, ConfigError> {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ConfigError {
                var: "WORKERS",
                value: base_url.into(),
                expected: "base_url is an http(s) URL".into(),
            });
        }
        Ok(WorkerSpec {
            name,
            device: Device::Cpu,
            engine: EngineSpec::OpenAi(OpenAiSpec {
                base_url: base_url.trim_end_matches('/').to_string(),
                model: model.unwrap_or_else(|| cfg.default_model.clone()),
                n_parallel: n_parallel.unwrap_or(cfg.scheduler.max_in_flight as u32).max(1),
                api_key: api_key.or_else(|| cfg.openai_api_key.clone()),
                request_timeout: cfg.ollama_timeout,
                health_every: Duration::from_secs(10),
                max_model_len: max_model_len.or(cfg.openai_max_model_len),
            }),
            process: EngineProcess::Thread,
        })
    };

    if let Some(list) = &cfg.workers {
        let mut specs = Vec::new();
        for (i, w) in list.iter().enumerate() {
            let spec = match w.clone() {
                WorkerConfig::Embedded {
                    name,
                    device,
                    model,
                    n_ctx,
                    n_parallel,
                    threads,
                    gpu_layers,
                    prefix_cache,
                    process,
                } => {
                    let device = parse_device(device.as_deref())?;
                    let name = name.unwrap_or_else(|| device.map_or(format!("cpu{i}"), |d| format!("gpu{d}")));
                    embedded(name, device, model, n_ctx, n_parallel, threads, gpu_layers, prefix_cache, process)?
                }
                WorkerConfig::Openai { name, base_url, model, n_parallel, api_key, max_model_len, .. } => openai(
                    name.unwrap_or_else(|| format!("openai{i}")),
                    &base_url,
                    model,
                    n_parallel,
                    api_key,
                    max_model_len,
                )?,
            };
            if specs.iter().any(|s: &WorkerSpec| s.name == spec.name) {
                return Err(ConfigError { var: "WORKERS", value: spec.name, expected: "unique worker names".into() });
            }
            specs.push(spec);
        }
        return Ok(specs);
    }
    match cfg.llm_backend {
        LlmBackend::Vllm => Ok(vec![openai("vllm0".into(), &with_v1(&cfg.vllm_api_base), None, None, None, None)?]),
        LlmBackend::Ollama => {
            Ok(vec![openai("ollama0".into(), &with_v1(&cfg.ollama_base_url), None, None, None, None)?])
        }
        LlmBackend::LlamaCppServer => {
            Ok(vec![openai("llamacpp0".into(), &with_v1(&cfg.llamacpp_api_base), None, None, None, None)?])
        }
        LlmBackend::Embedded if !gpus.is_empty() => gpus
            .iter()
            .map(|(index, _)| embedded(format!("gpu{index}"), Some(*index), None, None, None, None, None, None, None))
            .collect(),
        LlmBackend::Embedded => Ok(vec![embedded("cpu0".into(), None, None, None, None, None, None, None, None)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_worker_list_is_reported_without_any_of_its_values() {
        let text = r#"[{"kind":"openai","base_url":"http://10.0.0.9:8000","model":"m","api_key":"sk-live-4242","n_parallel":"sk-live-4242"}]"#;
        let e = parse_workers(text).unwrap_err().to_string();
        assert!(!e.contains("sk-live-4242") && !e.contains("10.0.0.9"), "{e}");
        assert!(e.contains("WORKERS") && e.contains("line 1 column"), "{e}");
        let broken = r#"[{"kind":"openai","api_key":"sk-live-4242""#;
        let e = parse_workers(broken).unwrap_err().to_string();
        assert!(!e.contains("sk-live-4242"), "{e}");
    }
    use crate::config::Source;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::from_source(&Source::from_pairs(pairs.iter().copied())).unwrap()
    }

    #[test]
    fn the_python_miners_variables_pick_the_backend() {
        let c =
            cfg(&[("LLM_BACKEND", "vllm"), ("VLLM_API_BASE", "http://gpu-box:8000/v1"), ("DEFAULT_MODEL", "Qwen/Q")]);
        let specs = worker_specs(&c, &[]).unwrap();
        let EngineSpec::OpenAi(o) = &specs[0].engine else { panic!() };
        assert_eq!(
            (specs[0].name.as_str(), o.base_url.as_str(), o.model.as_str(), o.n_parallel),
            ("vllm0", "http://gpu-box:8000/v1", "Qwen/Q", 10)
        );

        let c = cfg(&[
            ("LLM_BACKEND", "ollama"),
            ("OLLAMA_BASE_URL", "http://localhost:11434"),
            ("OLLAMA_TIMEOUT", "120.0"),
        ]);
        let specs = worker_specs(&c, &[]).unwrap();
        let EngineSpec::OpenAi(o) = &specs[0].engine else { panic!() };
        assert_eq!(o.base_url, "http://localhost:11434/v1");
        assert_eq!(o.request_timeout, Duration::from_secs(120));
    }

    #[test]
    fn an_openai_workers_context_length_comes_from_its_entry_else_openai_max_model_len() {
        let workers = r#"[{"kind":"openai","base_url":"http://a:8000/v1","max_model_len":16384},{"kind":"openai","base_url":"http://b:8000/v1"}]"#;
        let c = cfg(&[("WORKERS", workers), ("OPENAI_MAX_MODEL_LEN", "4096")]);
        let lens: Vec<Option<u32>> = worker_specs(&c, &[])
            .unwrap()
            .iter()
            .map(|w| match &w.engine {
                EngineSpec::OpenAi(o) => o.max_model_len,
                EngineSpec::Embedded(_) => panic!("openai workers only"),
            })
            .collect();
        assert_eq!(lens, [Some(16384), Some(4096)]);
    }

    #[test]
    fn embedded_gets_one_worker_per_gpu_or_one_cpu_worker() {
        let model = tempfile::NamedTempFile::new().unwrap();
        let path = model.path().to_str().unwrap();
        let c = cfg(&[("MODEL_PATH", path)]);
        let cpu = worker_specs(&c, &[]).unwrap();
        assert_eq!(cpu.len(), 1);
        assert_eq!((cpu[0].name.as_str(), &cpu[0].device), ("cpu0", &Device::Cpu));
        let gpus = worker_specs(&c, &[(0, "H100".into()), (1, "H100".into())]).unwrap();
        assert_eq!(gpus.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["gpu0", "gpu1"]);
        let EngineSpec::Embedded(e) = &gpus[1].engine else { panic!() };
        assert_eq!((e.gpu_device, e.gpu_layers), (Some(1), 999));
    }

    #[test]
    fn an_explicit_list_mixes_kinds_and_is_validated() {
        let model = tempfile::NamedTempFile::new().unwrap();
        let path = model.path().to_str().unwrap();
        let json = format!(
            r#"[{{"kind":"embedded","device":"gpu1","model":"{path}","n_parallel":4,"n_ctx":4096}},
               {{"kind":"openai","base_url":"http://10.0.0.7:8000/v1","model":"m","n_parallel":16}}]"#
        );
        let c = cfg(&[("WORKERS", json.as_str())]);
        let specs = worker_specs(&c, &[]).unwrap();
        assert_eq!(specs.iter().map(|s| s.parallel()).collect::<Vec<_>>(), [4, 16]);
        assert_eq!(specs[0].name, "gpu1");
        assert_eq!(specs[1].name, "openai1");

        assert_eq!(parse_workers("[]").unwrap_err().var, "WORKERS");
        let managed = cfg(&[(
            "WORKERS",
            r#"[{"kind":"openai","name":"v1","base_url":"http://127.0.0.1:8101","command":"vllm serve Q --port 8101","env":{"CUDA_VISIBLE_DEVICES":"1"}},
                {"kind":"openai","base_url":"http://10.0.0.7:8000/v1","command":["python3","-m","llama_cpp.server"]},
                {"kind":"openai","base_url":"http://10.0.0.8:8000/v1"}]"#,
        )]);
        let servers = managed_servers(&managed).unwrap();
        assert_eq!(servers.len(), 2, "only workers with a command");
        assert_eq!((servers[0].worker.as_str(), servers[0].base_url.as_str()), ("v1", "http://127.0.0.1:8101/v1"));
        assert_eq!(servers[0].argv, ["vllm", "serve", "Q", "--port", "8101"]);
        assert_eq!(servers[0].env["CUDA_VISIBLE_DEVICES"], "1");
        assert_eq!((servers[1].worker.as_str(), servers[1].argv.len()), ("openai1", 3));
        assert!(parse_workers(r#"[{"kind":"embedded","gpu":"x"}]"#).unwrap_err().expected.contains("unknown field"));
        // Issue 33: split as a shell splits it, quoted arguments whole.
        let quoted = cfg(&[(
            "WORKERS",
            r#"[{"kind":"openai","base_url":"http://127.0.0.1:8101","command":"vllm serve 'Q Q' --chat-template \"a b\" x\\ y"}]"#,
        )]);
        let argv = &managed_servers(&quoted).unwrap()[0].argv;
        assert_eq!(argv, &["vllm", "serve", "Q Q", "--chat-template", "a b", "x y"]);
        let open =
            cfg(&[("WORKERS", r#"[{"kind":"openai","base_url":"http://127.0.0.1:8101","command":"vllm \"a"}]"#)]);
        assert!(managed_servers(&open).unwrap_err().expected.contains("a quote is left open"));
        let bad_url = cfg(&[("WORKERS", r#"[{"kind":"openai","base_url":"localhost:8000"}]"#)]);
        assert_eq!(worker_specs(&bad_url, &[]).unwrap_err().var, "WORKERS");
        let dup = format!(
            r#"[{{"kind":"embedded","name":"a","model":"{path}"}},{{"kind":"embedded","name":"a","model":"{path}"}}]"#
        );
        assert!(worker_specs(&cfg(&[("WORKERS", dup.as_str())]), &[]).unwrap_err().expected.contains("unique"));
    }

    #[test]
    fn gpu_engines_run_in_a_child_process_by_default_and_a_worker_can_say_otherwise() {
        let model = tempfile::NamedTempFile::new().unwrap();
        let path = model.path().to_str().unwrap();
        let gpus = [(0, "H100".to_string())];
        let process = |pairs: &[(&str, &str)]| -> Vec<EngineProcess> {
            let mut all = vec![("MODEL_PATH", path)];
            all.extend_from_slice(pairs);
            worker_specs(&cfg(&all), &gpus).unwrap().into_iter().map(|s| s.process).collect()
        };
        let child = || EngineProcess::Child { exe: None };
        assert_eq!(process(&[]), [child()], "a GPU worker by default");
        assert_eq!(process(&[("ENGINE_PROCESS", "never")]), [EngineProcess::Thread]);
        let mixed = format!(
            r#"[{{"kind":"embedded","device":"cpu","model":"{path}"}},
               {{"kind":"embedded","device":"cpu","model":"{path}","process":"child"}},
               {{"kind":"embedded","device":"gpu0","model":"{path}","process":"thread"}},
               {{"kind":"embedded","device":"gpu0","name":"g","model":"{path}"}}]"#
        );
        assert_eq!(
            process(&[("WORKERS", mixed.as_str())]),
            [EngineProcess::Thread, child(), EngineProcess::Thread, child()]
        );
        let always = format!(r#"[{{"kind":"embedded","device":"cpu","model":"{path}"}}]"#);
        assert_eq!(process(&[("WORKERS", always.as_str()), ("ENGINE_PROCESS", "always")]), [child()]);
        let bad = format!(r#"[{{"kind":"embedded","model":"{path}","process":"fork"}}]"#);
        assert!(parse_workers(&bad).unwrap_err().expected.contains("unknown variant"));
    }
}
