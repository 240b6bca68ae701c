//! The `tcc-coordinator` command: `serve` (the default) and `migrate`.

use clap::{Parser, Subcommand};
use tcc_coordinator::config::{self, Config, LogFormat};
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| config::without_secrets(e).exit());
    init_logs(cli.config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcc-coordinator: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcc-coordinator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
