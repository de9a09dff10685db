//! The fleet artefacts in `packaging/` (docs/serve.md): the Prometheus alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`, with series that make
//! each alert fire and series that must not), and the Grafana dashboard is one a Grafana can
//! import. That every dashboard query returns data from a real Prometheus scraping
//! `kvmprof serve` is tested in serve.rs, where the daemon runs.
use std::{path::Path, process::Command};

use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs promtool with `args` from the workspace root; None (after saying why) without it.
fn promtool(test: &str, args: &[&str]) -> Option<String> {
    if !Path::new(PROMTOOL).exists() {
        eprintln!("skipped {test}: no {PROMTOOL} (Debian package prometheus)");
        return None;
    }
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
    Some(text)
}

#[test]
fn the_alerting_rules_pass_promtool_check() {
    if let Some(out) = promtool(
        "the_alerting_rules_pass_promtool_check",
        &["check", "rules", "packaging/kvmprof-alerts.yml"],
    ) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn the_alerts_fire_on_the_series_they_are_for_and_only_on_those() {
    if let Some(out) = promtool(
        "the_alerts_fire_on_the_series_they_are_for_and_only_on_those",
        &["test", "rules", "tests/prometheus/kvmprof-alerts.test.yml"],
    ) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn every_alert_is_tested_by_promtool() {
    let rules = std::fs::read_to_string(workspace().join("packaging/kvmprof-alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(workspace().join("tests/prometheus/kvmprof-alerts.test.yml"))
            .unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let cases = tests
            .lines()
            .filter(|l| l.trim() == format!("alertname: {alert}"))
            .count();
        assert!(cases > 0, "{alert} is not tested");
    }
}

/// What Grafana needs to import the dashboard and bind it to a Prometheus data source:
/// every panel's queries go to the `datasource` variable, each with its own refId.
#[test]
fn the_dashboard_queries_the_chosen_prometheus() {
    let text = std::fs::read_to_string(workspace().join("packaging/kvmprof-dashboard.json"))
        .expect("dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert_eq!(d["uid"], "kvmprof-exits");
    let vars = d["templating"]["list"].as_array().expect("variables");
    assert!(vars.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let mut queries = 0;
    for panel in d["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("title");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        for (i, t) in targets.iter().enumerate() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert_eq!(
                t["refId"],
                ((b'A' + i as u8) as char).to_string(),
                "{title}"
            );
            // Only the metrics kvmprof serve exports (kvmprof/src/serve/exporter.rs).
            let expr = t["expr"].as_str().expect("expr");
            assert!(expr.contains("kvmprof_"), "{title}: {expr}");
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
}
