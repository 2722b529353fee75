//! The `snapfleet` binary as an operator runs it: `demo` end to end, usage errors, --help.

use snapfleet_tests::snapfleet_bin;
use std::process::Command;

#[test]
fn demo_runs_end_to_end_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(snapfleet_bin())
        .args(["--json", "demo", "--rows", "5000", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["consistency"]["keys_expected"].as_u64().unwrap() > 0);
    assert_eq!(report["load_rows"], 5000);
    for t in report["tables"].as_array().unwrap() {
        assert_eq!(t["source_digest"], t["restored_digest"], "{t}");
    }
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let out = Command::new(snapfleet_bin())
        .args(["db", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Nothing listens on port 1: a clear error and exit status 1.
    let out = Command::new(snapfleet_bin())
        .args(["db", "sql", "--master", "127.0.0.1:1", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("snapfleet db up"),
        "{err}"
    );
    let out = Command::new(snapfleet_bin())
        .args(["--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
}

/// A coordinator without certificates refuses to serve plaintext without roles anywhere but
/// loopback, and unauthenticated /metrics likewise, unless told `--insecure`.
#[test]
fn plaintext_coordinator_only_on_loopback_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        vec!["--listen", "0.0.0.0:0"],
        vec!["--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"],
    ] {
        let out = Command::new(snapfleet_bin())
            .args(["coordinator", "--id", "1", "--data"])
            .arg(dir.path().join("c"))
            .args(&extra)
            .env_remove("SNAPFLEET_CERTS")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--insecure"), "{extra:?}: {err}");
    }
}
