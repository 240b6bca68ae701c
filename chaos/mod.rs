//! The chaos suite: break things on purpose and check the coordinator's promise from the
//! participants' side. Shared by the `tcc-chaos` runner and the short run in `tests/chaos.rs`.

pub mod participant;
pub mod procs;
pub mod proxy;
pub mod receiver;
pub mod replication;
pub mod scenario;

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

/// The defaults of a short run: minutes, not more.
pub fn short_options(coordinator: PathBuf) -> Options {
    Options {
        coordinator,
        jobs: 80,
        duration: Duration::from_secs(10),
        concurrency: 8,
        settle: Duration::from_secs(90),
    }
}
