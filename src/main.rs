//! The `tcc-coordinator` command: `serve` (the default), `migrate` and `check-participant`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tcc_coordinator::check::{CheckOptions, check};
use tcc_coordinator::config::{self, Config, LogFormat, Span};
use tcc_coordinator::domain::TargetUrl;
use tcc_coordinator::startup::{Application, Database, Listeners, shutdown_signal};

/// Every job allocates many small, short-lived buffers (HTTP heads, JSON, statement parameters)
/// across threads; mimalloc serves them with less CPU than the system allocator
/// (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tcc-coordinator",
    version,
    about = "A Try-Confirm/Cancel transaction coordinator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Play the coordinator against a participant and report each rule it keeps or breaks.
    ///
    /// Needs no database and no coordinator setting. Exit 0 when nothing failed, 1 when a rule
    /// failed, 2 when the check could not run.
    CheckParticipant(CheckArgs),
}

/// The arguments of `check-participant`.
#[derive(Args)]
struct CheckArgs {
    /// The participant's Try URL (POSTed to), an absolute http or https URL.
    #[arg(value_name = "TRY_URL", value_parser = parse_try_url)]
    try_url: String,
    /// The Try body, JSON: what this participant needs to reserve something.
    #[arg(long, value_name = "JSON", default_value = "{}", value_parser = parse_body)]
    body: serde_json::Value,
    /// Wait for a reservation's expiry (to confirm it after) only when it comes within this
    /// many seconds; otherwise that rule is skipped.
    #[arg(long, value_name = "SECONDS", default_value = "30")]
    max_wait: Span,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `check-participant` alone, so that no coordinator setting (flag or environment variable)
/// is read, nor can stop it.
#[derive(Parser)]
#[command(
    name = "tcc-coordinator check-participant",
    version,
    about = "Play the coordinator against a participant and report each rule it keeps or breaks",
    after_help = "Exit status: 0 when no rule failed, 1 when a rule failed, 2 when the check could not run."
)]
struct CheckCli {
    #[command(flatten)]
    args: CheckArgs,
}

fn parse_try_url(s: &str) -> Result<String, String> {
    TargetUrl::parse(s)
        .map(String::from)
        .map_err(|why| format!("TRY_URL {why}"))
}

fn parse_body(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("--body is not JSON: {e}"))
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "check-participant")
    {
        let args = std::iter::once("tcc-coordinator check-participant".into())
            .chain(std::env::args_os().skip(2));
        let cli = CheckCli::try_parse_from(args).unwrap_or_else(|e| e.exit());
        return check_participant(cli.args);
    }
    let Cli { command, config } =
        Cli::try_parse().unwrap_or_else(|e| config::without_secrets(e).exit());
    // Reached when coordinator flags come before the subcommand.
    if let Some(Command::CheckParticipant(args)) = command {
        return check_participant(args);
    }
    let cli = Cli { command, config };
    init_logs(cli.config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcc-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcc-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the checker and prints its report (a table, or JSON with `--json`): exit 0 when no
/// rule failed, 1 when one did, 2 when the check could not run.
fn check_participant(args: CheckArgs) -> ExitCode {
    const COULD_NOT_RUN: u8 = 2;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcc-coordinator check-participant: cannot start the runtime: {e}");
            return ExitCode::from(COULD_NOT_RUN);
        }
    };
    let mut options = CheckOptions::new(args.try_url);
    options.body = args.body;
    options.max_wait = args.max_wait.0;
    let report = match runtime.block_on(check(&options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("tcc-coordinator check-participant: {e}");
            return ExitCode::from(COULD_NOT_RUN);
        }
    };
    let text = if args.json {
        format!("{:#}\n", report.to_json())
    } else {
        report.to_string()
    };
    // A closed standard output (a pipe read no further) changes nothing of the result.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::from(report.exit_code())
}

/// `RUST_LOG` filters (default `info`); `TCC_LOG_FORMAT` chooses text or JSON lines. Colour
/// codes only when the output is a terminal. Lines about a job carry its `jobID` and
/// `correlationID` (the driver's span; in JSON, the `span` object).
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.config.validate()?;
    if matches!(cli.command, Some(Command::Migrate)) {
        let db = Database::open(&cli.config).await?;
        let result = tcc_coordinator::store::migrate(&db.config)
            .await
            .map(|applied| tracing::info!(?applied, "migrations applied"))
            .map_err(Into::into);
        db.close().await;
        return result;
    }
    // The ports first: a busy port fails start-up at once, before a cluster is created or a
    // migration runs.
    let listeners = Listeners::bind(&cli.config).await?;
    let db = Database::open(&cli.config).await?;
    let result = serve(&cli.config, listeners, &db).await;
    db.close().await;
    result
}

async fn serve(config: &Config, listeners: Listeners, db: &Database) -> anyhow::Result<()> {
    let app = Application::build_on(listeners, config, &db.config).await?;
    tracing::info!(addr = %app.local_addr()?, "tcc-coordinator serving");
    if let Some(m) = app.metrics_addr() {
        tracing::info!(addr = %m, "metrics serving");
    }
    if config.api_keys().is_empty() {
        tracing::warn!(
            "no API keys are configured (TCC_API_KEYS): the API is open to anyone who can reach it"
        );
    }
    if config.allowed_targets.is_any() {
        tracing::info!(
            "TCC_ALLOWED_TARGETS is *: any host but link-local and metadata addresses may be called; list the participants' hosts to narrow it"
        );
    }
    app.run_until_stopped(shutdown_signal()).await
}
