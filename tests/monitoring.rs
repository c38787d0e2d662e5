//! The dashboard and alert rules in `deploy/`, as an operator uses them: a real Prometheus
//! (Debian's `prometheus` package, which `scripts/install.sh --test` installs) scrapes a running
//! miner with the rules loaded, challenges go through the miner, and every dashboard panel's and
//! every rule's expression is evaluated through Prometheus's HTTP API. A panel that returns nothing
//! (a misspelt metric name, a label the miner does not export) fails the test, and so does a rule
//! naming a series that does not exist. `promtool` checks the rules, runs their unit tests (each
//! alert fires on synthetic series and stays quiet on healthy ones) and lints the miner's own
//! `/metrics`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use loosh_actors::protocol::signature::Hotkey;
use loosh_miner::client::validator::{challenge_body, ValidatorClient};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

/// A tool from Debian's `prometheus` package.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: `scripts/install.sh --test` installs Debian's prometheus")
    })
}

/// A Prometheus scraping `target` (host:port) every second as job `loosh-miner`, with the
/// shipped rules loaded and evaluated every second.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules = deploy("prometheus/loosh-miner.rules.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: loosh-miner\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Self { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let reply = reqwest::Client::new().get(format!("{}{path}", self.url)).query(query).send().await.ok()?;
        let body: Value = reply.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// An instant query's series (`None`: Prometheus refused the expression).
    async fn query(&self, expr: &str) -> Option<Vec<Value>> {
        let data = self.get("/api/v1/query", &[("query", expr)]).await?;
        data["result"].as_array().cloned()
    }

    /// Whether `expr` returns at least one series.
    async fn has_data(&self, expr: &str) -> bool {
        self.query(expr).await.is_some_and(|r| !r.is_empty())
    }

    /// The single value of `expr` (the first series'), if any.
    async fn value(&self, expr: &str) -> Option<f64> {
        self.query(expr).await?.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// The dashboard's queries as Grafana sends them: `$instance` as "all", `$__rate_interval` as a
/// window holding a few scrapes.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(deploy("grafana/loosh-miner.json")).unwrap())
        .expect("the dashboard is JSON");
    let vars: Vec<&str> =
        dash["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert!(vars.contains(&"datasource") && vars.contains(&"instance"), "variables: {vars:?}");
    let text = dash.to_string();
    assert!(!text.contains("127.0.0.1") && !text.contains(":8478"), "the dashboard names an instance");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {} has a fixed data source", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*").replace("$__rate_interval", "30s");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// The metric (and recorded series) names an expression reads, as far as the shipped rules use
/// them: the miner's own series, the process series, `up` and the recording rules' names.
fn series_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        let w = std::mem::take(&mut word);
        let named = ["loosh_", "process_", "instance:", "validator:"].iter().any(|p| w.starts_with(p)) || w == "up";
        if named && !names.contains(&w) {
            names.push(w);
        }
    }
    names
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(args)
        .current_dir(deploy("prometheus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("promtool runs");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn promtool_accepts_the_rules_and_every_alert_fires_and_stays_quiet_as_its_unit_tests_say() {
    let (ok, out) = promtool(&["check", "rules", "loosh-miner.rules.yml"], None);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "loosh-miner.rules.test.yml"], None);
    assert!(ok, "promtool test rules:\n{out}");
    // Every alert in the rules has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(deploy("prometheus/loosh-miner.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/loosh-miner.rules.test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(alert) && t[alert.len()..].starts_with(['\n', ',']) && t.contains("exp_labels"));
        assert!(fires, "no unit test expects {alert} to fire");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_rule_reads_series_a_running_miner_exports_through_a_real_prometheus() {
    let validator = Hotkey::ephemeral();
    let miner = MinerProcess::start(&tiny_model(), true, &[("VALIDATOR_HOTKEYS", validator.ss58())]);

    // The miner's own exposition passes Prometheus's naming lint.
    let exposition = reqwest::get(format!("{}/metrics", miner.ops_url)).await.unwrap().text().await.unwrap();
    let (ok, out) = promtool(&["check", "metrics"], Some(&exposition));
    assert!(ok, "promtool check metrics:\n{out}");

    let target = miner.ops_url.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&target);
    wait_for("Prometheus to scrape the miner", Duration::from_secs(60), || async {
        prom.value("up{job=\"loosh-miner\"}").await == Some(1.0)
    })
    .await;

    // Work after the first scrape, so that rates and quantiles have something to show.
    let mut client = ValidatorClient::new(&miner.url, validator.clone());
    client.handshake().await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.availability().await.unwrap()["available"], true);
    }
    for _ in 0..5 {
        client.challenge(&challenge_body("Say hello.", 8, 0.7)).await.unwrap();
    }
    wait_for("the challenges to be scraped and the rules evaluated", Duration::from_secs(60), || async {
        prom.value("loosh_challenges_total{outcome=\"ok\"}").await == Some(5.0)
            && prom.value("instance:loosh_challenge_seconds:p99_5m").await.is_some_and(f64::is_finite)
            && prom.has_data("loosh_engine_tokens_per_second").await
    })
    .await;

    // Every panel returns data.
    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        if !prom.has_data(&expr).await {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "dashboard queries with no data:\n{}", empty.join("\n"));

    // Every rule loaded, evaluated without error, and reads only series that exist.
    let groups = prom.get("/api/v1/rules", &[]).await.expect("the rules API answers");
    let rules: Vec<Value> =
        groups["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect();
    let shipped = std::fs::read_to_string(deploy("prometheus/loosh-miner.rules.yml")).unwrap();
    let count = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("- record:") || l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(rules.len(), count, "Prometheus loaded {} of the {count} rules", rules.len());
    let mut missing = Vec::new();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "rule {name}: {}", rule["lastError"]);
        if rule["type"] == "recording" && !prom.has_data(name).await {
            missing.push(format!("recording rule {name} has no data"));
        }
        for series in series_names(rule["query"].as_str().unwrap()) {
            if series != "up" && !prom.has_data(&format!("count({{__name__=\"{series}\"}})")).await {
                missing.push(format!("{name} reads {series}, which has no series"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    // The check can fail: a misspelt name has no data.
    assert!(!prom.has_data("count({__name__=\"loosh_challenge_total\"})").await);
    assert!(!prom.has_data("rate(loosh_challenge_total{instance=~\".*\"}[30s])").await);
}
