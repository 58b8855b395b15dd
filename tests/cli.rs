//! The `strata` command line: help for every subcommand, layered configuration,
//! and clear errors with a non-zero exit on bad input.

mod common;

use common::strata_bin;
use std::process::Command;

fn strata(args: &[&str]) -> std::process::Output {
    Command::new(strata_bin())
        .args(args)
        .output()
        .expect("strata runs")
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["dev", "--help"],
        vec!["metadata", "--help"],
        vec!["bookie", "--help"],
        vec!["gateway", "--help"],
        vec!["admin", "--help"],
        vec!["admin", "status", "--help"],
        vec!["admin", "topics", "--help"],
        vec!["admin", "topics", "create", "--help"],
    ] {
        let out = strata(&args);
        assert!(out.status.success(), "strata {args:?} --help exits 0");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "strata {args:?} prints usage"
        );
    }
}

#[test]
fn flags_beat_environment_beat_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "node_id = 5\nzone = \"file-zone\"\nmax_frame_bytes = 1000\nmetadata_addrs = [\"10.0.0.1:7600\"]\n",
    )
    .unwrap();
    let resolve = |env: &[(&str, &str)], flags: &[&str]| {
        let out = Command::new(strata_bin())
            .args(["gateway", "--print-config", "--config"])
            .arg(&file)
            .args(flags)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = resolve(&[], &[]);
    assert!(from_file.contains("node_id = 5"), "{from_file}");
    assert!(from_file.contains("zone = \"file-zone\""));
    assert!(from_file.contains("max_frame_bytes = 1000"));

    let from_env = resolve(&[("STRATA_GATEWAY_NODE_ID", "6")], &[]);
    assert!(from_env.contains("node_id = 6"), "{from_env}");
    assert!(
        from_env.contains("zone = \"file-zone\""),
        "untouched keys keep the file's value"
    );

    let from_flag = resolve(&[("STRATA_GATEWAY_NODE_ID", "6")], &["--node-id", "7"]);
    assert!(from_flag.contains("node_id = 7"), "{from_flag}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = strata(&["bookie", "--config", "/no/such/strata.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn unknown_config_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metadata.toml");
    std::fs::write(&file, "node_id = 1\nno_such_key = true\n").unwrap();
    let out = Command::new(strata_bin())
        .args(["metadata", "--print-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such_key"), "{stderr}");
}

#[test]
fn admin_against_nothing_fails_with_a_message() {
    let out = strata(&["admin", "--metadata-addrs", "127.0.0.1:1", "topics", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach metadata"), "{stderr}");
}
