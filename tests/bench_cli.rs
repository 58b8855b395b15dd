//! `strata bench produce|consume|e2e` against a real `strata dev`: the JSON
//! summaries that scripts read are well-formed and add up. No speed is
//! asserted: the machine running the tests may be slow and shared.

mod common;

use common::{strata_bin, DevCluster};
use serde_json::Value;
use std::process::Command;

/// Runs `strata bench <args> --bootstrap <cluster> --json` and returns its summary.
fn bench_json(cluster: &DevCluster, args: &[&str]) -> Value {
    let out = Command::new(strata_bin())
        .arg("bench")
        .args(args)
        .args(["--bootstrap", &cluster.bootstrap(), "--json"])
        .output()
        .expect("strata bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "strata bench {args:?} failed: {stderr}"
    );
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "stdout holds one JSON object and nothing else: {stdout}"
    );
    serde_json::from_str(stdout.trim()).expect("stdout is JSON")
}

fn number(summary: &Value, path: &[&str]) -> f64 {
    let mut value = summary;
    for key in path {
        value = &value[key];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is a number in {summary}"))
}

/// The percentiles at `path` exist, are positive, and rise from p50 to max.
fn assert_ordered_percentiles(summary: &Value, path: &str) {
    let at = |p: &str| number(summary, &[path, p]);
    let (p50, p95, p99, p99_9, max) = (at("p50"), at("p95"), at("p99"), at("p99_9"), at("max"));
    assert!(p50 > 0.0, "{path}: {summary}");
    assert!(
        p50 <= p95 && p95 <= p99 && p99 <= p99_9 && p99_9 <= max,
        "{path} percentiles are ordered: {summary}"
    );
}

#[test]
fn produce_for_three_seconds_prints_a_well_formed_summary() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let summary = bench_json(
        &cluster,
        &["produce", "--topic", "bench-produce", "--seconds", "3"],
    );
    assert_eq!(summary["bench"], "produce");
    assert_eq!(summary["runs"], 1);
    assert!(number(&summary, &["records"]) > 0.0, "{summary}");
    assert_eq!(number(&summary, &["errors"]), 0.0, "{summary}");
    assert!(number(&summary, &["records_per_sec"]) > 0.0);
    assert!(number(&summary, &["mb_per_sec"]) > 0.0);
    assert_eq!(
        number(&summary, &["bytes"]),
        number(&summary, &["records"]) * 1024.0,
        "every record has the default 1024-byte value"
    );
    assert_ordered_percentiles(&summary, "latency_ms");
}

#[test]
fn consume_reads_back_every_produced_record_with_its_send_time() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let topic = ["--topic", "bench-read-back"];
    let produced = bench_json(
        &cluster,
        &[
            &["produce", "--records", "5000", "--partitions", "3"],
            &topic[..],
        ]
        .concat(),
    );
    assert_eq!(number(&produced, &["records"]), 5000.0, "{produced}");
    assert_eq!(number(&produced, &["errors"]), 0.0, "{produced}");

    let consumed = bench_json(&cluster, &[&["consume"], &topic[..]].concat());
    assert_eq!(consumed["stopped_by"], "end-offsets", "{consumed}");
    assert_eq!(number(&consumed, &["records"]), 5000.0, "{consumed}");
    assert_eq!(number(&consumed, &["records_with_send_time"]), 5000.0);
    assert_eq!(number(&consumed, &["errors"]), 0.0);
    assert_ordered_percentiles(&consumed, "e2e_latency_ms");
}

#[test]
fn e2e_consumes_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(dir.path());
    let summary = bench_json(
        &cluster,
        &[
            "e2e",
            "--topic",
            "bench-e2e",
            "--rate",
            "2000",
            "--seconds",
            "2",
        ],
    );
    assert!(number(&summary, &["produce", "records"]) > 0.0, "{summary}");
    assert_eq!(number(&summary, &["produce", "errors"]), 0.0, "{summary}");
    assert_eq!(number(&summary, &["records_missing"]), 0.0, "{summary}");
    assert_eq!(
        number(&summary, &["consume", "records"]),
        number(&summary, &["produce", "records"])
    );
    assert_ordered_percentiles(&summary["produce"], "latency_ms");
    assert_ordered_percentiles(&summary["consume"], "e2e_latency_ms");
}
