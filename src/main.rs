//! The `tcc-coordinator` command: `serve` (the default) and `migrate`.

use clap::{Parser, Subcommand};
use tcc_coordinator::config::Config;
use tcc_coordinator::startup::{Application, Database, shutdown_signal};

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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.config.validate()?;
    let db = Database::open(&cli.config).await?;
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => tcc_coordinator::store::migrate(&db.config)
            .await
            .map(|applied| tracing::info!(?applied, "migrations applied"))
            .map_err(Into::into),
        Command::Serve => serve(&cli.config, &db).await,
    };
    db.close().await;
    result
}

async fn serve(config: &Config, db: &Database) -> anyhow::Result<()> {
    let app = Application::build(config, &db.config).await?;
    tracing::info!(addr = %app.local_addr()?, "tcc-coordinator serving");
    if let Some(m) = app.metrics_addr() {
        tracing::info!(addr = %m, "metrics serving");
    }
    tracing::warn!("no API keys are configured: the API is open to anyone who can reach it");
    app.run_until_stopped(shutdown_signal()).await
}
