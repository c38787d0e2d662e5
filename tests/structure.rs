//! The node reaches the engine through three doors only: `front_door` (the running engine),
//! `settings` (what configures it) and `metrics` (its registry). A file of the node that imports
//! anything else of `loosh_actors` fails this test, so that the engine's rooms can be rearranged
//! without touching the node.
//!
//! The clients (`src/client/`) speak to a miner from outside, as a validator does, so they may
//! also use the wire protocol (`protocol`: its Fernet and RSA halves, its JSON shapes), and
//! nothing else. The operator's checks of the chain and of a backend server (`doctor`, the
//! registration check and `post-ip`) take their clients from the front door.
//!
//! The benchmarks (the `loosh-bench` crate) start a node through the node's library and use it
//! like any client: the same three doors, plus the wire protocol a validator speaks. Past the door
//! only where a benchmark must, each file named with the module it needs: llama.cpp's own
//! references (`inference`), a worker's step split and fault injection (`workers`), and the chain
//! written into by `metagraph` (`chain`).

use std::path::{Path, PathBuf};

const ALLOWED: &[&str] = &["front_door", "settings", "metrics"];

/// What a client of a miner reaches (`src/client/` and the benchmarks): the doors and the
/// protocol, as a validator speaks it.
const CLIENT_ALLOWED: &[&str] = &["front_door", "settings", "metrics", "protocol"];
/// The benchmarks' files that reach past the door, and the one module each reaches.
const BENCH_PAST_THE_DOOR: &[(&str, &str)] = &[
    ("reference.rs", "inference"),
    ("sampling.rs", "inference"),
    ("inference.rs", "inference"),
    ("miner.rs", "inference"),
    ("miner.rs", "workers"),
    ("workers.rs", "workers"),
    ("process.rs", "workers"),
    ("process.rs", "inference"),
    ("answering.rs", "workers"),
    ("metagraph.rs", "chain"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `loosh_actors::<module>` a file names, with its line number.
fn engine_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("loosh_actors::") {
            rest = &rest[at + "loosh_actors::".len()..];
            let module: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push((n + 1, module));
        }
    }
    found
}

#[test]
fn the_node_imports_only_the_front_door_the_settings_and_the_metrics_of_the_engine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "the node's sources were found: {files:?}");
    let mut outside = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let allowed = if relative.starts_with("client") { CLIENT_ALLOWED } else { ALLOWED };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, module) in engine_modules(&text) {
            if !allowed.contains(&module.as_str()) {
                outside.push(format!("src/{}:{line}: loosh_actors::{module}", relative.display()));
            }
        }
    }
    assert!(outside.is_empty(), "the node reaches into the engine past its doors:\n{}", outside.join("\n"));
}

#[test]
fn the_scan_sees_an_import_past_the_doors() {
    let text = "use loosh_actors::front_door::FrontDoor;\nuse loosh_actors::scheduler::SchedulerMsg;";
    assert_eq!(engine_modules(text), vec![(1, "front_door".to_string()), (2, "scheduler".to_string())]);
}

#[test]
fn the_benchmarks_use_the_node_and_the_front_door_and_name_each_step_past_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench").join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "the benchmarks' sources were found: {files:?}");
    let (mut outside, mut used) = (Vec::new(), Vec::new());
    for file in &files {
        let name = file.strip_prefix(&src).unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(file).unwrap();
        for (line, module) in engine_modules(&text) {
            let named = BENCH_PAST_THE_DOOR.contains(&(name.as_str(), module.as_str()));
            if named {
                used.push((name.clone(), module.clone()));
            }
            if !CLIENT_ALLOWED.contains(&module.as_str()) && !named {
                outside.push(format!("bench/src/{name}:{line}: loosh_actors::{module}"));
            }
        }
    }
    assert!(outside.is_empty(), "a benchmark reaches past the door unnamed:\n{}", outside.join("\n"));
    // The list only shrinks: a step past the door that no file takes any more is struck from it.
    let stale: Vec<_> =
        BENCH_PAST_THE_DOOR.iter().filter(|(f, m)| !used.iter().any(|(uf, um)| uf == f && um == m)).collect();
    assert!(stale.is_empty(), "named as reaching past the door, but no longer does: {stale:?}");
}
