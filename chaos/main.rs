//! `tcc-chaos`: run the fault scenarios against the real coordinator binary and report.
//!
//! `tcc-chaos` runs every scenario once (a short run); `--soak 30` runs them interleaved with new
//! seeds for 30 minutes. Any invariant violation makes the exit status non-zero. Every report
//! line prints its seed: `--seed N --scenario NAME` replays a run's choices.

#[path = "mod.rs"]
mod chaos;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tcc-chaos",
    about = "Break things on purpose and check the TCC promise"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Scenarios to run (repeatable); default: all. One of: kill-coordinator, three-instances,
    /// postgres, flaky-participants, short-expiries, failover, sdk-participant.
    #[arg(long)]
    scenario: Vec<String>,
    /// Seed of the first scenario; default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Jobs per scenario run.
    #[arg(long, default_value_t = 80)]
    jobs: usize,
    /// Seconds over which each run's submissions are spread.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Clients submitting at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds every accepted job may take to end once the faults stop.
    #[arg(long, default_value_t = 90)]
    settle: u64,
    /// Keep running the scenarios, interleaved with fresh seeds, for this many minutes.
    #[arg(long)]
    soak: Option<u64>,
    /// The coordinator binary; default: `tcc-coordinator` next to this one.
    #[arg(long)]
    coordinator: Option<PathBuf>,
    /// The `inventory` example of tcc-participant, for the sdk-participant scenario; default:
    /// `examples/inventory` beside this binary (`cargo build --release -p tcc-participant
    /// --example inventory`).
    #[arg(long, env = chaos::INVENTORY_VAR)]
    inventory: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the suite's participant, printing every effect, with no fault unless asked for: a
    /// participant to try the coordinator with by hand. Try URLs: http://ADDR/try/{anything}.
    Participant {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        #[command(flatten)]
        demo: DemoFaults,
    },
}

/// How the demo participant holds reservations, and what it is told to do wrong.
#[derive(Args)]
struct DemoFaults {
    /// How long a reservation lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    ttl: u64,
    /// Refuse every confirm (403, nothing applied): with a second participant that confirms, a
    /// job across both ends heuristic.
    #[arg(long)]
    refuse_confirms: bool,
    /// Refuse every Try (409): a job with a task here fails and cancels the others.
    #[arg(long)]
    fail_tries: bool,
    /// Answer this share of requests (0 to 1) with 503, applying nothing: the coordinator
    /// retries.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Reserve for a Try that arrives after its `tcc-deadline` (by default it answers 409 and
    /// stores nothing): a participant that does not read the header.
    #[arg(long)]
    ignore_deadline: bool,
}

/// The demo participant: every effect printed; faults only as asked.
fn participant(listen: &str, demo: &DemoFaults) -> ExitCode {
    if !(0.0..=1.0).contains(&demo.error_rate) {
        eprintln!("tcc-chaos participant: --error-rate must be between 0 and 1");
        return ExitCode::FAILURE;
    }
    let served = tokio::runtime::Runtime::new().and_then(|rt| {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("participant listening on http://{}", listener.local_addr()?);
            let (service, task) =
                chaos::participant::ParticipantService::serve(listener, None, 0, true)?;
            let ttl = Duration::from_secs(demo.ttl);
            let certain = |on: bool| if on { 1.0 } else { 0.0 };
            service.set_faults(chaos::participant::Faults {
                ttl: (ttl, ttl),
                refuse_confirm_rate: certain(demo.refuse_confirms),
                fail_try_rate: certain(demo.fail_tries),
                ignore_deadline_rate: certain(demo.ignore_deadline),
                error_rate: demo.error_rate,
                ..chaos::participant::Faults::default()
            });
            let _ = task.await;
            Ok::<(), std::io::Error>(())
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcc-chaos participant: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Participant { listen, demo }) = &cli.command {
        return participant(listen, demo);
    }
    let scenarios: Vec<chaos::Scenario> = if cli.scenario.is_empty() {
        chaos::Scenario::ALL.to_vec()
    } else {
        let mut out = Vec::new();
        for s in &cli.scenario {
            match chaos::Scenario::parse(s) {
                Some(x) => out.push(x),
                None => {
                    eprintln!("tcc-chaos: unknown scenario {s:?}");
                    return ExitCode::from(2);
                }
            }
        }
        out
    };
    let coordinator = cli.coordinator.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("tcc-coordinator")))
            .unwrap_or_else(|| PathBuf::from("tcc-coordinator"))
    });
    if !coordinator.is_file() {
        eprintln!(
            "tcc-chaos: no coordinator binary at {} (build it with `cargo build --release`, or pass --coordinator)",
            coordinator.display()
        );
        return ExitCode::from(2);
    }
    let inventory = if scenarios.iter().any(|s| s.needs_inventory()) {
        let found = match &cli.inventory {
            Some(path) if path.is_file() => Ok(path.clone()),
            Some(path) => Err(format!(
                "no inventory binary at {} (build it with `{}`)",
                path.display(),
                chaos::INVENTORY_BUILD
            )),
            None => chaos::find_inventory(),
        };
        match found {
            Ok(path) => Some(path),
            Err(e) => {
                eprintln!("tcc-chaos: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let opts = chaos::Options {
        inventory,
        jobs: cli.jobs,
        duration: Duration::from_secs(cli.duration),
        concurrency: cli.concurrency.max(1),
        settle: Duration::from_secs(cli.settle),
        ..chaos::short_options(coordinator)
    };
    let mut seed = cli.seed.unwrap_or_else(|| fastrand::u64(..1_000_000_000));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcc-chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = chaos::scratch_dir("run");
    let until = cli
        .soak
        .map(|m| Instant::now() + Duration::from_secs(m * 60));
    let mut all = Vec::new();
    loop {
        println!("seed {seed}");
        match runtime.block_on(chaos::run_all(&dir, &scenarios, seed, &opts)) {
            Ok(r) => all.extend(r),
            Err(e) => {
                eprintln!("tcc-chaos: {e}");
                return ExitCode::FAILURE;
            }
        }
        seed = seed.wrapping_add(scenarios.len() as u64);
        if until.is_none_or(|u| Instant::now() >= u) {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let sum = |f: fn(&chaos::Report) -> usize| all.iter().map(f).sum::<usize>();
    let violations = sum(|r| r.violations.len());
    let longest = all.iter().map(|r| r.longest).max().unwrap_or_default();
    println!(
        "total: runs={} accepted={} completed={} failed={} canceled={} heuristic={} (unknown outcome {}) violations={} longest={:.1}s unanswered={} (stored {})",
        all.len(),
        sum(|r| r.accepted),
        sum(|r| r.completed),
        sum(|r| r.failed),
        sum(|r| r.canceled),
        sum(|r| r.heuristic),
        sum(|r| r.heuristic_unknown),
        violations,
        longest.as_secs_f64(),
        sum(|r| r.unanswered),
        sum(|r| r.unanswered_stored)
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
