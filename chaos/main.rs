//! `just chaos`: runs the chaos cases against the real broker and prints the report; exits
//! non-zero on any loss, duplicate or mismatch. Every run is reproducible from its seed.

#[path = "harness.rs"]
mod harness;
// The toolkit shared with the integration tests.
#[path = "../tests/kit/mod.rs"]
mod kit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use harness::{ChaosOptions, CASES, DEFAULT_KINDS, KINDS};

#[derive(Parser)]
#[command(name = "chaos", about = "Kill actors, the process and the broker mid-batch; prove nothing is lost or duplicated")]
struct Args {
    /// Comma-separated pipeline kinds the iterations rotate through: append, dedup, counts,
    /// upsert (default: all).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Comma-separated cases (default: all). Cases: see chaos/README.md.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Iterations per case (a fresh topic, table and checkpoint each).
    #[arg(long, default_value_t = 3)]
    iterations: u32,
    /// Faults per iteration.
    #[arg(long, default_value_t = 5)]
    faults: u32,
    /// Seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Produce rate in events per second while faults are injected.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Stop starting new iterations after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()))
        .with_writer(std::io::stderr)
        .init();
    // Injected panics are expected here: one line each, no backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("chaos: panic: {info}")));
    let seed = args.seed.unwrap_or_else(rand::random);
    let cases: Vec<String> = if args.cases.is_empty() { CASES.iter().map(|c| c.to_string()).collect() } else { args.cases };
    if let Some(bad) = cases.iter().find(|c| !CASES.contains(&c.as_str())) {
        eprintln!("error: unknown case '{bad}'; cases: {}", CASES.join(", "));
        return ExitCode::FAILURE;
    }
    let kinds: Vec<String> =
        if args.kinds.is_empty() { DEFAULT_KINDS.iter().map(|k| k.to_string()).collect() } else { args.kinds };
    if let Some(bad) = kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        eprintln!("error: unknown kind '{bad}'; kinds: {}", KINDS.join(", "));
        return ExitCode::FAILURE;
    }
    let exe = std::env::current_exe().expect("current exe");
    let opts = ChaosOptions {
        kinds,
        cases: cases.clone(),
        iterations: args.iterations,
        faults: args.faults,
        seed,
        rate: args.rate,
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        exactly_bin: exe.with_file_name("exactly"),
        kafka_script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka"),
        s3_script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/s3"),
        work_dir: std::env::temp_dir().join(format!("exactly-chaos-{}", std::process::id())),
    };
    eprintln!(
        "chaos: seed {seed} (--seed {seed} reproduces this run), {} cases x {} iterations x {} faults",
        cases.len(),
        opts.iterations,
        opts.faults
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let started = std::time::Instant::now();
    let reports = rt.block_on(async {
        let mut reports = Vec::new();
        'outer: for i in 0..opts.iterations {
            for case in &cases {
                if args.duration.is_some_and(|d| started.elapsed().as_secs() >= d) {
                    break 'outer;
                }
                let r = harness::run_case(case, i, &opts).await;
                eprintln!(
                    "chaos: {case} #{i} ({}): {} faults, {} — {}",
                    r.kind,
                    r.faults,
                    if r.ok { "pass" } else { "FAIL" },
                    if r.detail.is_empty() { "ok" } else { &r.detail }
                );
                reports.push(r);
            }
        }
        reports
    });
    if reports.iter().all(|r| r.ok) {
        let _ = std::fs::remove_dir_all(&opts.work_dir);
    } else {
        println!("kept {} (configs, tables, each process's log) for a post-mortem", opts.work_dir.display());
    }
    println!("{}", harness::render(&reports));
    println!("seed {seed}, {:.0} s", started.elapsed().as_secs_f64());
    if reports.iter().all(|r| r.ok) && !reports.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
