//! `inventory`: the example service on tcc-participant (see `service.rs` for what it answers).
//!
//! `cargo run --release -p tcc-participant --example inventory -- --listen ADDR --database-url URL
//! [--hold SECONDS] [--public-url URL]`

mod service;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tcc_participant::{Config, Participant};

/// A stock-keeping service whose holds are TCC reservations.
#[derive(Parser)]
#[command(name = "inventory")]
struct Args {
    /// The address to serve on (port 0: any free port; the line printed says which).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The service's PostgreSQL (a URL or key=value pairs); its tables are created if missing.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: String,
    /// How long a hold lasts before it lapses and its units return.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    hold: f64,
    /// The URL the coordinator reaches this service at (the links are built on it); default
    /// `http://` and the address served.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("inventory: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inventory: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !(args.hold.is_finite() && args.hold > 0.0 && args.hold <= 30.0 * 86400.0) {
        anyhow::bail!("--hold must be a number of seconds above 0 and at most 30 days");
    }
    let pool = tcc_participant::pool(&args.database_url, 16)?;
    tcc_participant::migrate(&pool).await?;
    // One replica at a time: `CREATE TABLE IF NOT EXISTS` run by two at once can fail on the
    // catalog's unique index.
    let mut client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("the database: {e}"))?;
    let tx = client.transaction().await?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(7361102648459314)")
        .await?;
    tx.batch_execute(service::SCHEMA).await?;
    tx.commit().await?;
    drop(client);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    let public = args.public_url.unwrap_or_else(|| format!("http://{addr}"));
    let mut config = Config::new(public);
    config.hold = Duration::from_secs_f64(args.hold);
    let participant = Participant::new(pool.clone(), service::Inventory, config);
    let sweeper = participant.spawn_sweeper();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok();
    let app = service::router(service::App {
        participant,
        pool,
        metrics,
    });
    println!("inventory serving on http://{addr}");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    sweeper.abort();
    Ok(served?)
}
