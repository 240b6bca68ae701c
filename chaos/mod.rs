//! The chaos suite: break things on purpose and check the coordinator's promise from the
//! participants' side. Shared by the `tcc-chaos` runner and the short run in `tests/chaos.rs`.

pub mod participant;
pub mod procs;
pub mod proxy;
pub mod receiver;
pub mod replication;
pub mod rules;
pub mod scenario;
pub mod sdk;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use scenario::{Options, Report, Scenario, World};

/// Run `scenarios` one after another on one PostgreSQL under `dir`; one report each.
pub async fn run_all(
    dir: &Path,
    scenarios: &[Scenario],
    seed: u64,
    opts: &Options,
) -> Result<Vec<Report>, String> {
    let d = dir.to_path_buf();
    let world = tokio::task::spawn_blocking(move || World::start(&d))
        .await
        .map_err(|e| e.to_string())??;
    let mut reports = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let r = scenario::run(&world, *s, seed.wrapping_add(i as u64), opts).await;
        println!("{}", r.line());
        for v in r.violations.iter().take(20) {
            println!("  VIOLATION {v}");
        }
        reports.push(r);
    }
    tokio::task::spawn_blocking(move || world.stop())
        .await
        .map_err(|e| e.to_string())?;
    Ok(reports)
}

/// A private directory for the suite's PostgreSQL (short: Unix socket paths are limited).
pub fn scratch_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tcc-chaos-{tag}-{}", std::process::id()))
}

/// The variable naming the `inventory` binary, for the `sdk-participant` scenario.
pub const INVENTORY_VAR: &str = "TCC_CHAOS_INVENTORY";

/// How to build the `inventory` binary.
pub const INVENTORY_BUILD: &str = "cargo build --release -p tcc-participant --example inventory";

/// The `inventory` example of tcc-participant, for the `sdk-participant` scenario: `$TCC_CHAOS_INVENTORY`
/// if set, else `examples/inventory` in the target directory of the running binary (beside it,
/// as for `target/release/tcc-chaos`, or one up, as for a test binary in `target/debug/deps`).
/// `Err` says where it looked and how to build it.
pub fn find_inventory() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(INVENTORY_VAR) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{INVENTORY_VAR} names {}, which is not a file",
                path.display()
            ))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot tell where this binary is: {e}"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("examples").join("inventory"))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        format!(
            "no inventory binary (looked at {}): build it with `{INVENTORY_BUILD}` (or without --release for a debug build beside a debug tcc-chaos), or name it with {INVENTORY_VAR} or --inventory",
            looked.join(", ")
        )
    })
}

/// The defaults of a short run: minutes, not more.
pub fn short_options(coordinator: PathBuf) -> Options {
    Options {
        coordinator,
        inventory: None,
        jobs: 80,
        duration: Duration::from_secs(10),
        concurrency: 8,
        settle: Duration::from_secs(90),
    }
}
