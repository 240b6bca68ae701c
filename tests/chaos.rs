//! A short run of every chaos scenario against the real coordinator binary: no invariant
//! violation is allowed. The long soak is `cargo run --release --bin tcc-chaos -- --soak 30`.

#[path = "../chaos/mod.rs"]
#[allow(dead_code)]
mod chaos;

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_keeps_the_promise() {
    let seed = std::env::var("TCC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..1_000_000_000));
    println!("chaos seed {seed} (replay with TCC_CHAOS_SEED={seed})");
    let opts = chaos::short_options(PathBuf::from(env!("CARGO_BIN_EXE_tcc-coordinator")));
    let dir = chaos::scratch_dir("test");
    let reports = chaos::run_all(&dir, &chaos::Scenario::ALL, seed, &opts)
        .await
        .expect("the chaos suite ran");
    let _ = std::fs::remove_dir_all(&dir);
    let mut failures = Vec::new();
    for r in &reports {
        assert!(r.accepted > 0, "{}: no job accepted", r.scenario);
        for v in &r.violations {
            failures.push(format!("{} (seed {}): {v}", r.scenario, r.seed));
        }
    }
    assert!(
        failures.is_empty(),
        "invariant violations:\n{}",
        failures.join("\n")
    );
}
