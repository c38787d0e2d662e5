//! The node reaches the engine through three doors only: `front_door` (the running engine),
//! `settings` (what configures it) and `metrics` (its registry). A file of the node that imports
//! anything else of `loosh_actors` fails this test, so that the engine's rooms can be rearranged
//! without touching the node.
//!
//! Outside the rule, named here so that the list only shrinks: the benchmarks (`src/bench/`, which
//! measure the engine's parts against references), the clients (`src/client/`, which speak the
//! wire protocol from the validator's side), and the operator's checks of the chain and of a
//! backend server (`doctor`, and the registration check and `post-ip` in `chain.rs`).

use std::path::{Path, PathBuf};

const ALLOWED: &[&str] = &["front_door", "settings", "metrics"];
const CLIENTS: &[&str] = &["doctor.rs", "chain.rs"];

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
        if relative.starts_with("bench")
            || relative.starts_with("client")
            || CLIENTS.iter().any(|c| relative == Path::new(c))
        {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (line, module) in engine_modules(&text) {
            if !ALLOWED.contains(&module.as_str()) {
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
