//! The CI subset of the chaos suite: every case once, a few seeded faults each, audited.
//! `just chaos` runs the full suite.

#[path = "../chaos/harness.rs"]
mod harness;

use std::path::PathBuf;

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chaos_case_loses_and_duplicates_nothing() -> Result<(), Failed> {
    let _heavy = common::heavy().await;
    let seed = std::env::var("EXACTLY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261124);
    let dir = tempfile::tempdir().unwrap();
    let opts = harness::ChaosOptions {
        kinds: harness::DEFAULT_KINDS.iter().map(|k| k.to_string()).collect(),
        cases: harness::CASES.iter().map(|c| c.to_string()).collect(),
        iterations: 1,
        faults: 2,
        seed,
        rate: 1_000,
        brokers: common::brokers(),
        exactly_bin: PathBuf::from(env!("CARGO_BIN_EXE_exactly")),
        kafka_script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka"),
        s3_script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/s3"),
        work_dir: dir.path().to_path_buf(),
    };
    let mut reports = Vec::new();
    for case in &opts.cases {
        reports.push(harness::run_case(case, 0, &opts).await);
    }
    let table = harness::render(&reports);
    eprintln!("{table}");
    let failed: Vec<String> =
        reports.iter().filter(|r| !r.ok).map(|r| format!("{} ({}): {}", r.case, r.kind, r.detail)).collect();
    if !failed.is_empty() {
        return Err(Failed(format!("chaos cases failed (seed {seed}):\n{}", failed.join("\n"))));
    }
    let faults: u64 = reports.iter().map(|r| r.faults).sum();
    assert!(faults >= harness::CASES.len() as u64, "every case injected at least one fault: {faults}");
    Ok(())
}

/// A failed case's reason, printed as the test's last lines (an `Err` from a test prints no
/// backtrace, so the reason is never buried under one).
struct Failed(String);

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
