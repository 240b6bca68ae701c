//! End-to-end benchmark: jobs per second and latency from `POST /jobs` to the last confirm a
//! participant receives, for several task counts and concurrencies; and the PostgreSQL ceiling
//! (pgbench doing the synchronous commits our happy path needs per job).
//!
//! `cargo bench --bench e2e` (options after `--`: `--tasks 1,2,5 --concurrency 1,8,32,128
//! --seconds 10 --no-pgbench --idle 10000 --with-dtmrs`). Writes `target/bench/e2e.md` and
//! `target/bench/e2e.svg`.
//!
//! Everything runs on this machine: PostgreSQL (a private cluster), the coordinator (the release
//! binary, as its own process), the participant stubs and the closed-loop load generator (this
//! process). `TCC_BIN` names another coordinator binary to measure (to compare two builds).
//!
//! `--instances 1,2,3` runs the points once per number of coordinator instances sharing the
//! database, the clients spread over them (CPU and RSS summed over the instances).
//! `--with-atomikos` adds the points of `PUT /coordinator/confirm` (the client runs the Tries,
//! then hands the links to the coordinator).
//! `--sweep N` puts N completed jobs finished 40 days ago in the database, then measures again
//! while the retention sweep deletes them, and says how many it deleted meanwhile.
//! `--with-callback` adds the points of JCL jobs with a `jobSuccessURL` (a stub that answers
//! 204), the same finish line: what the notification outbox costs.
//! Every feature stays on while this coordinator is measured: the event log and the metrics (as
//! always), API keys configured (every request carries its key), and a `jobSuccessURL` on one
//! JCL job in ten (a stub that answers 204). `--bare` measures without the keys and callbacks.
//! `--wal-stats` prints, after each point, what its WAL consisted of (`pg_walinspect`: bytes and
//! records per job by record type, full-page images apart).
//! `--pairs N` (with dtmrs) measures each point N times as a pair, this coordinator and dtmrs
//! with both servers up (odd pairs this coordinator first, even pairs dtmrs first, since the
//! second run of a pair can gain from the order alone), and prints each pair's ratio and their
//! median: the machine's speed drifts within minutes, and a pair's two halves are seconds apart.
//! `--with-dtmrs` measures dtmrs (DTM's HTTP protocol) the same way, on its own database in the
//! same cluster, with the same stubs and the same finish line: per job the client prepares a
//! global transaction, registers each branch and calls its Try (in turn, as DTM's clients do),
//! then submits; dtmrs confirms every branch. The same client then drives this coordinator
//! through its DTM API (`tcc-coordinator (DTM API)`). The binary is taken from `DTMRS_BIN`, or
//! installed once with `cargo install dtmrs` into `target/bench/dtmrs/`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{post, put};
use chrono::{SecondsFormat, Utc};
use serde_json::json;
use tcc_coordinator::embedded_pg::{EmbeddedPostgres, create_database};
use tokio::sync::oneshot;

/// The harness shares the machine with what it measures: the same allocator as the coordinator
/// keeps its own share of the CPU small (glibc's malloc was a third of it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Jobs waiting for their last confirm: correlation id → (confirms still to come, finish signal).
type Waiting = Arc<Mutex<HashMap<String, (usize, Option<oneshot::Sender<Instant>>)>>>;

#[derive(Clone)]
struct Stubs {
    base: String,
    waiting: Waiting,
}

async fn stub_try(
    State(s): State<Stubs>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let corr = headers
        .get("correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expires =
        (Utc::now() + chrono::Duration::seconds(60)).to_rfc3339_opts(SecondsFormat::Millis, true);
    (
        StatusCode::CREATED,
        axum::Json(
            json!({"participantLink": {"uri": format!("{}/r/{corr}/{name}", s.base), "expires": expires}}),
        ),
    )
}

async fn stub_confirm(
    State(s): State<Stubs>,
    UrlPath((corr, _task)): UrlPath<(String, String)>,
) -> StatusCode {
    let now = Instant::now();
    let mut w = s.waiting.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((left, tx)) = w.get_mut(&corr) {
        *left = left.saturating_sub(1);
        if *left == 0 {
            if let Some(tx) = tx.take() {
                let _ = tx.send(now);
            }
            w.remove(&corr);
        }
    }
    StatusCode::NO_CONTENT
}

async fn stub_cancel() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// DTM's branches answer 200 for success.
async fn stub_dtm_confirm(state: State<Stubs>, path: UrlPath<(String, String)>) -> StatusCode {
    stub_confirm(state, path).await;
    StatusCode::OK
}

async fn stub_dtm_cancel() -> StatusCode {
    StatusCode::OK
}

/// The systems measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum System {
    /// This coordinator, through JCL `POST /jobs`.
    #[default]
    Ours,
    /// dtmrs through DTM's TCC HTTP protocol.
    Dtmrs,
    /// This coordinator through the Atomikos-compatible `PUT /coordinator/confirm`: the client
    /// runs the Tries, then hands over the links.
    Atomikos,
    /// This coordinator through JCL, each job with a `jobSuccessURL`.
    Callback,
    /// This coordinator through JCL while its retention sweep deletes old finished jobs.
    Sweep,
    /// This coordinator through DTM's TCC HTTP protocol: the same client as for dtmrs.
    Dtm,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Ours => "tcc-coordinator",
            System::Dtmrs => "dtmrs",
            System::Atomikos => "tcc-coordinator (Atomikos)",
            System::Callback => "tcc-coordinator (callback)",
            System::Sweep => "tcc-coordinator (sweeping)",
            System::Dtm => "tcc-coordinator (DTM API)",
        }
    }
}

struct Opts {
    tasks: Vec<usize>,
    concurrency: Vec<usize>,
    seconds: u64,
    pgbench: bool,
    /// Jobs to park in `reserved` before measuring the idle coordinator (0: skip).
    idle: usize,
    dtmrs: bool,
    /// Also measure `PUT /coordinator/confirm` (the client runs the Tries).
    atomikos: bool,
    callback: bool,
    /// Old finished jobs to put in the database, then measure while the sweep deletes them.
    sweep: usize,
    /// Coordinator instances sharing the database, one run each (clients spread over them).
    instances: Vec<usize>,
    /// Without API keys and without the callback on one job in ten.
    bare: bool,
    /// After each point, its WAL by record type.
    wal_stats: bool,
    /// With dtmrs: measure each point this many times as a pair (this coordinator, then dtmrs,
    /// both servers up), instead of every point of one system and then the other's.
    pairs: usize,
}

/// How a point is measured, besides its size.
#[derive(Debug, Clone, Copy)]
struct Measuring {
    /// Every feature on (the key, a callback on one job in ten).
    features: bool,
    /// Print the point's WAL by record type.
    wal_stats: bool,
}

fn parse_list(s: &str) -> Vec<usize> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn opts() -> Opts {
    let mut o = Opts {
        tasks: vec![1, 2, 5],
        concurrency: vec![1, 8, 32, 128],
        seconds: 10,
        pgbench: true,
        idle: 10_000,
        dtmrs: false,
        atomikos: false,
        callback: false,
        sweep: 0,
        instances: vec![1],
        bare: false,
        wal_stats: false,
        pairs: 0,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let next = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--tasks" => {
                o.tasks = parse_list(&next);
                i += 1;
            }
            "--concurrency" => {
                o.concurrency = parse_list(&next);
                i += 1;
            }
            "--seconds" => {
                o.seconds = next.parse().unwrap_or(10);
                i += 1;
            }
            "--no-pgbench" => o.pgbench = false,
            "--idle" => {
                o.idle = next.parse().unwrap_or(0);
                i += 1;
            }
            "--with-dtmrs" => o.dtmrs = true,
            "--with-atomikos" => o.atomikos = true,
            "--with-callback" => o.callback = true,
            "--bare" => o.bare = true,
            "--wal-stats" => o.wal_stats = true,
            "--pairs" => {
                o.pairs = next.parse().unwrap_or(0);
                o.dtmrs = o.pairs > 0 || o.dtmrs;
                i += 1;
            }
            "--sweep" => {
                o.sweep = next.parse().unwrap_or(0);
                i += 1;
            }
            "--instances" => {
                o.instances = parse_list(&next);
                i += 1;
            }
            _ => {} // cargo passes --bench
        }
        i += 1;
    }
    o
}

/// One measured point.
#[derive(Debug, Clone, Default)]
struct Point {
    system: System,
    /// Coordinator instances on the one database (1 for dtmrs).
    instances: usize,
    tasks: usize,
    concurrency: usize,
    jobs: usize,
    per_sec: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    commits_per_job: f64,
    wal_syncs_per_job: f64,
    /// WAL written per job, KiB, and its records (the cluster's: only the system measured runs).
    wal_kb_per_job: f64,
    wal_records_per_job: f64,
    cpu_per_1000: f64,
    pg_cpu_per_1000: f64,
    /// This process: the load generator and the participant stubs.
    harness_cpu_per_1000: f64,
    rss_mib: f64,
}

impl Point {
    /// The system, with the number of instances when several shared the database.
    fn label(&self) -> String {
        match self.instances {
            0 | 1 => self.system.name().to_string(),
            n => format!("{} ×{n}", self.system.name()),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A `/proc/{pid}/status` field in MiB (`VmHWM` peak, `VmRSS` now).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0)
        })
        .unwrap_or(0.0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of `/proc/{pid}/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        s[s.rfind(')')? + 1..]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// CPU seconds from stat fields: utime + stime, and with `children` the reaped children too.
fn cpu_of(f: &[String], children: bool) -> f64 {
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let own = n(11) + n(12);
    (if children { own + n(13) + n(14) } else { own }) / clock_ticks()
}

/// (utime + stime) in seconds and peak RSS in MiB of a process.
fn proc_usage(pid: u32) -> (f64, f64) {
    let cpu = stat_fields(pid).map(|f| cpu_of(&f, false)).unwrap_or(0.0);
    (cpu, status_mib(pid, "VmHWM:"))
}

/// CPU seconds used by PostgreSQL so far: the postmaster, its live children and the ones that
/// ended.
fn postgres_cpu(postmaster: Option<u32>) -> f64 {
    let Some(pm) = postmaster else { return 0.0 };
    let mut total = stat_fields(pm).map(|f| cpu_of(&f, true)).unwrap_or(0.0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(f) = stat_fields(pid)
                && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pm)
            {
                total += cpu_of(&f, false);
            }
        }
    }
    total
}

/// What PostgreSQL counts so far: the database's transactions committed (read-only ones
/// included), and the cluster's WAL flushes (what synchronous commits cost: PostgreSQL groups
/// concurrent ones), WAL bytes and WAL records (what the writes cost, whatever their commits).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    commits: f64,
    syncs: f64,
    wal_bytes: f64,
    wal_records: f64,
}

async fn db_counters(admin: &tokio_postgres::Config, db: &str) -> Counters {
    let Ok((client, conn)) = admin.connect(tokio_postgres::NoTls).await else {
        return Counters::default();
    };
    let task = tokio::spawn(conn);
    let commits = client
        .query_one(
            "SELECT xact_commit::float8 FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .await
        .map(|r| r.get::<_, f64>(0))
        .unwrap_or(0.0);
    let (syncs, wal_bytes, wal_records) = client
        .query_one(
            "SELECT wal_sync::float8, wal_bytes::float8, wal_records::float8 FROM pg_stat_wal",
            &[],
        )
        .await
        .map(|r| (r.get::<_, f64>(0), r.get::<_, f64>(1), r.get::<_, f64>(2)))
        .unwrap_or_default();
    drop(client);
    let _ = task.await;
    Counters {
        commits,
        syncs,
        wal_bytes,
        wal_records,
    }
}

/// The WAL's current position, with `pg_walinspect` installed to read it later.
async fn wal_position(admin: &tokio_postgres::Config, db: &str) -> Option<String> {
    let mut config = admin.clone();
    config.dbname(db);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.ok()?;
    let task = tokio::spawn(conn);
    let lsn = async {
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            .await
            .ok()?;
        let row = client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .ok()?;
        Some(row.get::<_, String>(0))
    }
    .await;
    drop(client);
    let _ = task.await;
    lsn
}

/// What the WAL written since `from` (up to what is flushed) consisted of, per job: each record
/// type's records, bytes of records and bytes of full-page images, the largest first.
async fn print_wal_stats(admin: &tokio_postgres::Config, db: &str, from: &str, jobs: usize) {
    let mut config = admin.clone();
    config.dbname(db);
    let Ok((client, conn)) = config.connect(tokio_postgres::NoTls).await else {
        return;
    };
    let task = tokio::spawn(conn);
    let per = jobs.max(1) as f64;
    let rows = client
        .query(
            "SELECT \"resource_manager/record_type\", count::float8, record_size::float8,
                    fpi_size::float8
             FROM pg_get_wal_stats($1::text::pg_lsn, pg_current_wal_flush_lsn(), true)
             WHERE count > 0 ORDER BY record_size + fpi_size DESC LIMIT 12",
            &[&from],
        )
        .await
        .unwrap_or_else(|e| {
            // The WAL read up to what is flushed: asynchronous commits leave the rest for later.
            eprintln!("  wal stats not read: {e}");
            Vec::new()
        });
    for r in rows {
        println!(
            "  wal {:<28} records/job={:>6.2} bytes/job={:>7.0} fpi-bytes/job={:>7.0}",
            r.get::<_, String>(0),
            r.get::<_, f64>(1) / per,
            r.get::<_, f64>(2) / per,
            r.get::<_, f64>(3) / per
        );
    }
    drop(client);
    let _ = task.await;
}

/// A system under test, running as its own process; stopped with SIGTERM when dropped.
struct Server {
    system: System,
    /// One process, or several coordinator instances on one database.
    children: Vec<Child>,
    addrs: Vec<String>,
}

impl Server {
    /// The first instance's address (the only one, but for several coordinator instances).
    fn addr(&self) -> &str {
        &self.addrs[0]
    }

    /// CPU seconds and peak RSS (MiB) of every process, summed.
    fn usage(&self) -> (f64, f64) {
        self.children
            .iter()
            .map(|c| proc_usage(c.id()))
            .fold((0.0, 0.0), |(a, b), (c, d)| (a + c, b + d))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Start `cmd` (listening on `port`) quietly: errors only, on our stderr.
fn spawn_server(system: System, mut cmd: Command, port: u16) -> Server {
    let child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", system.name()));
    Server {
        system,
        children: vec![child],
        addrs: vec![format!("http://127.0.0.1:{port}")],
    }
}

/// The API key the load generator sends (unless `--bare`), an admin's.
const BENCH_KEY: &str = "bench-key-5f3a9c1e7b2d4068";

/// `instances` coordinator processes on the database at `db_url`, each with its own id; with
/// `keys`, `BENCH_KEY` is the one API key.
fn start_coordinator(db_url: &str, instances: usize, keys: bool) -> Server {
    let bin =
        std::env::var_os("TCC_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tcc-coordinator").into());
    let mut all = Server {
        system: System::Ours,
        children: Vec::new(),
        addrs: Vec::new(),
    };
    for i in 0..instances.max(1) {
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("TCC_INSTANCE_ID", format!("bench-{i}"))
            .env("TCC_LISTEN", format!("127.0.0.1:{port}"));
        if keys {
            cmd.env("TCC_API_KEYS", format!("bench:admin:{BENCH_KEY}"));
        }
        let mut one = spawn_server(System::Ours, cmd, port);
        all.children.append(&mut one.children);
        all.addrs.append(&mut one.addrs);
    }
    all
}

/// The dtmrs binary: `DTMRS_BIN`, or `cargo install dtmrs` into `target/bench/dtmrs/` once.
fn dtmrs_binary(out_dir: &Path) -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("DTMRS_BIN") {
        return Some(PathBuf::from(bin));
    }
    let root = out_dir.join("dtmrs");
    let bin = root.join("bin").join("dtmrs");
    if !bin.exists() {
        eprintln!("installing dtmrs into {} (once)", root.display());
        let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "dtmrs", "--version", DTMRS_VERSION, "--root"])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not install dtmrs; measuring without it");
            return None;
        }
    }
    Some(bin)
}

const BENCH_DB: &str = "bench";
const DTMRS_DB: &str = "dtmrs";

/// The dtmrs release measured.
const DTMRS_VERSION: &str = "0.13.0";

fn start_dtmrs(bin: &Path, socket_dir: &Path, db: &str) -> Server {
    let (port, grpc) = (free_port(), free_port());
    let mut cmd = Command::new(bin);
    cmd.env(
        "DTMRS_DB",
        format!(
            "postgres://postgres@localhost/{db}?host={}",
            socket_dir.display()
        ),
    )
    .env("DTMRS_ADDR", format!("127.0.0.1:{port}"))
    .env("DTMRS_GRPC_ADDR", format!("127.0.0.1:{grpc}"));
    spawn_server(System::Dtmrs, cmd, port)
}

/// Wait until the server answers `path` with 200.
async fn wait_ready(http: &reqwest::Client, server: &Server, path: &str) {
    let ready = Instant::now() + Duration::from_secs(60);
    for addr in &server.addrs {
        while !http
            .get(format!("{addr}{path}"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                Instant::now() < ready,
                "{} never became ready",
                server.system.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Start one job through JCL: `POST /jobs`.
async fn submit_jcl(
    http: &reqwest::Client,
    addr: &str,
    base: &str,
    corr: &str,
    tasks: usize,
    callback: bool,
) -> bool {
    let task_list: Vec<_> = (0..tasks)
        .map(|t| json!({"taskID": format!("t{t}"), "taskURL": format!("{base}/try/t{t}")}))
        .collect();
    let mut doc = json!({"correlationID": corr, "tasks": task_list});
    if callback {
        doc["jobSuccessURL"] = json!(format!("{base}/callback"));
    }
    let body = doc.to_string();
    http.post(format!("{addr}/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status() == 202)
}

/// One job through the Atomikos-compatible coordinator: each Try in turn (the client's own
/// calls, as an Atomikos client makes them), then `PUT /coordinator/confirm` with the links,
/// which answers 204 once every link is confirmed.
async fn submit_atomikos(
    http: &reqwest::Client,
    addr: &str,
    base: &str,
    corr: &str,
    tasks: usize,
) -> bool {
    let mut links = Vec::new();
    for t in 0..tasks {
        let link = async {
            let r = http
                .post(format!("{base}/try/t{t}"))
                .header("correlation-id", corr)
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            Some(v["participantLink"].clone())
        }
        .await;
        match link {
            Some(l) => links.push(l),
            None => return false,
        }
    }
    http.put(format!("{addr}/coordinator/confirm"))
        .header("content-type", "application/tcc+json")
        .body(json!({"participantLinks": links}).to_string())
        .send()
        .await
        .is_ok_and(|r| r.status() == 204)
}

/// Start one job through DTM's TCC protocol: prepare, then register each branch and call its
/// Try, then submit. dtmrs answers 200 with `dtm_result` for every step.
async fn submit_dtm(
    http: &reqwest::Client,
    addr: &str,
    base: &str,
    gid: &str,
    tasks: usize,
) -> bool {
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{addr}/api/dtmsvr/{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let ok = |r: Result<reqwest::Response, reqwest::Error>| r.is_ok_and(|r| r.status() == 200);
    if !ok(post("prepare", json!({"gid": gid, "trans_type": "tcc"})).await) {
        return false;
    }
    for t in 0..tasks {
        let branch = format!("{:02}", t + 1);
        let registered = post(
            "registerBranch",
            json!({"gid": gid, "branch_id": branch,
                   "trans_type": "tcc", "data": "{}",
                   "try": format!("{base}/try/t{t}"),
                   "confirm": format!("{base}/dtm/confirm/{gid}/t{t}"),
                   "cancel": format!("{base}/dtm/cancel/{gid}/t{t}")}),
        )
        .await;
        if !ok(registered) {
            return false;
        }
        let tried = http
            .post(format!("{base}/try/t{t}"))
            .header("correlation-id", gid)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !tried {
            return false;
        }
    }
    ok(post("submit", json!({"gid": gid, "trans_type": "tcc"})).await)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    server: &Server,
    stubs: &Stubs,
    http: &reqwest::Client,
    tasks: usize,
    concurrency: usize,
    seconds: u64,
    admin: &tokio_postgres::Config,
    db: &str,
    postmaster: Option<u32>,
    how: Measuring,
) -> Point {
    // Every point starts from a quiet system: the previous point's jobs have ended.
    quiesce(server.system, stubs, admin, db).await;
    let (cpu0, _) = server.usage();
    let pg0 = postgres_cpu(postmaster);
    let (own0, _) = proc_usage(std::process::id());
    let before = db_counters(admin, db).await;
    let lsn = if how.wal_stats {
        wal_position(admin, db).await
    } else {
        None
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    // Each measurement's ids are its own (a point measured again, as `--pairs` does, must not
    // reuse a transaction id).
    static MEASUREMENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let round = MEASUREMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let addr = server.addrs[c % server.addrs.len()].clone();
        let (http, stubs) = (http.clone(), stubs.clone());
        let system = server.system;
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let corr = format!("b{round}-{tasks}-{concurrency}-{c}-{n}");
                let (tx, rx) = oneshot::channel();
                stubs
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(corr.clone(), (tasks, Some(tx)));
                let sent = Instant::now();
                let ok = match system {
                    System::Ours | System::Sweep => {
                        // A callback on one job in ten, as in production.
                        let callback = how.features && n.is_multiple_of(10);
                        submit_jcl(&http, &addr, &stubs.base, &corr, tasks, callback).await
                    }
                    System::Callback => {
                        submit_jcl(&http, &addr, &stubs.base, &corr, tasks, true).await
                    }
                    System::Dtmrs | System::Dtm => {
                        submit_dtm(&http, &addr, &stubs.base, &corr, tasks).await
                    }
                    System::Atomikos => {
                        submit_atomikos(&http, &addr, &stubs.base, &corr, tasks).await
                    }
                };
                if ok && let Ok(Ok(done)) = tokio::time::timeout(Duration::from_secs(30), rx).await
                {
                    latencies.push(done.duration_since(sent).as_secs_f64() * 1000.0);
                    continue;
                }
                // Never finished: stop waiting for it.
                stubs
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&corr);
            }
            latencies
        });
    }
    let mut lat = Vec::new();
    while let Some(Ok(l)) = clients.join_next().await {
        lat.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let (cpu1, rss) = server.usage();
    let pg1 = postgres_cpu(postmaster);
    let (own1, _) = proc_usage(std::process::id());
    let after = db_counters(admin, db).await;
    let jobs = lat.len();
    if let Some(from) = lsn {
        print_wal_stats(admin, db, &from, jobs).await;
    }
    let per_job = |d: f64| if jobs == 0 { 0.0 } else { d / jobs as f64 };
    Point {
        system: server.system,
        instances: server.addrs.len(),
        tasks,
        concurrency,
        jobs,
        per_sec: jobs as f64 / elapsed,
        p50: percentile(&lat, 0.50),
        p95: percentile(&lat, 0.95),
        p99: percentile(&lat, 0.99),
        commits_per_job: per_job(after.commits - before.commits),
        wal_syncs_per_job: per_job(after.syncs - before.syncs),
        wal_kb_per_job: per_job(after.wal_bytes - before.wal_bytes) / 1024.0,
        wal_records_per_job: per_job(after.wal_records - before.wal_records),
        cpu_per_1000: per_job(cpu1 - cpu0) * 1000.0,
        pg_cpu_per_1000: per_job(pg1 - pg0) * 1000.0,
        harness_cpu_per_1000: per_job(own1 - own0) * 1000.0,
        rss_mib: rss,
    }
}

/// Park `n` jobs in `reserved` (autoConfirm false), then measure the idle coordinator for 10 s:
/// (jobs, RSS MiB, CPU share of one core).
async fn park(
    coordinator: &Server,
    stubs: &Stubs,
    http: &reqwest::Client,
    n: usize,
    admin: &tokio_postgres::Config,
    db: &str,
) -> (usize, f64, f64) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, next, addr, base) = (
            http.clone(),
            next.clone(),
            coordinator.addr().to_string(),
            stubs.base.clone(),
        );
        clients.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let body = json!({"correlationID": format!("idle-{i}"), "autoConfirm": false, "jobMaxTTL": 3600,
                    "tasks": [{"taskID": "t0", "taskURL": format!("{base}/try/t0")}]})
                .to_string();
                let _ = http
                    .post(format!("{addr}/jobs"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
            }
        });
    }
    while clients.join_next().await.is_some() {}
    // Wait until every one is parked.
    let until = Instant::now() + Duration::from_secs(300);
    while Instant::now() < until
        && count_jobs(admin, db, "status = 'reserved'")
            .await
            .unwrap_or(0)
            < n as i64
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pid = coordinator.children[0].id();
    let (cpu0, _) = proc_usage(pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu1, _) = proc_usage(pid);
    let rss = status_mib(pid, "VmRSS:");
    println!(
        "idle: {n} jobs reserved, RSS {rss:.0} MiB, CPU {:.2} % of a core",
        (cpu1 - cpu0) * 10.0
    );
    (n, rss, (cpu1 - cpu0) / 10.0)
}

/// How many jobs match `filter` (an SQL condition written here, never from input).
async fn count_jobs(admin: &tokio_postgres::Config, db: &str, filter: &str) -> Option<i64> {
    let (client, conn) = admin_db(admin, db)
        .connect(tokio_postgres::NoTls)
        .await
        .ok()?;
    let t = tokio::spawn(conn);
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM jobs WHERE {filter}"), &[])
        .await
        .ok()?
        .get(0);
    drop(client);
    let _ = t.await;
    Some(n)
}

/// The jobs `--sweep` made: finished 40 days ago, past the default retention of 30 days.
const OLD: &str = "correlation_id LIKE 'old-%'";

/// `n` completed jobs of two tasks each, finished 40 days ago, with an event row each, as the
/// coordinator would have left them, and as 40 days of autovacuum would have left their pages
/// (vacuumed: otherwise the first reads and the vacuum of the fresh rows, which a real sweep
/// never meets, are measured as the sweep's cost).
async fn age_jobs(admin: &tokio_postgres::Config, db: &str, n: usize) {
    let (client, conn) = admin_db(admin, db)
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to age jobs");
    let t = tokio::spawn(conn);
    for sql in [
        "INSERT INTO jobs (id, status, fields, correlation_id, auto_confirm, created_at,
                           updated_at, deadline, decided_at, finished_at, task_count, event_seq,
                           task_state, task_specs)
         SELECT 'old-' || i, 'completed', '{\"jobMaxTTL\": 60, \"autoConfirm\": true, \"tags\": []}',
                'old-' || i, true, now() - interval '40 days', now() - interval '40 days',
                now() - interval '40 days', now() - interval '40 days', now() - interval '40 days', 2, 1,
                (SELECT jsonb_object_agg(k::text, jsonb_build_object('status', 'confirmed',
                    'link_uri', 'http://127.0.0.1:9/r/' || i || '/' || k,
                    'link_expires', now() - interval '39 days', 'attempts', 1,
                    'start_time', now() - interval '40 days',
                    'end_time', now() - interval '40 days'))
                 FROM generate_series(0, 1) AS k)::json,
                (SELECT jsonb_object_agg(k::text, jsonb_build_object('task_id', 't' || k,
                    'try_spec', '{\"taskURL\": \"http://127.0.0.1:9/try\"}'::jsonb))
                 FROM generate_series(0, 1) AS k)::json
         FROM generate_series(1, $1::int) AS i",
        "INSERT INTO job_events (job_id, last_seq, events)
         SELECT 'old-' || i, 1, '[{\"type\": \"status\", \"status\": \"completed\"}]'
         FROM generate_series(1, $1::int) AS i",
    ] {
        client
            .execute(sql, &[&(n as i32)])
            .await
            .expect("insert old jobs");
    }
    client
        .batch_execute("VACUUM (ANALYZE) jobs, job_events")
        .await
        .expect("vacuum the old jobs");
    drop(client);
    let _ = t.await;
}

/// Jobs not yet ended.
const ACTIVE: &str = "status NOT IN ('completed', 'failed', 'canceled', 'heuristic')";

/// Wait (up to a minute) until no job is active: every confirm the stubs wait for has come, and
/// for this coordinator every job has ended in its database.
async fn quiesce(system: System, stubs: &Stubs, admin: &tokio_postgres::Config, db: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    let busy = || {
        !stubs
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    };
    while Instant::now() < until
        && (busy()
            || (system != System::Dtmrs && count_jobs(admin, db, ACTIVE).await.unwrap_or(0) > 0))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same server as `admin`, database `db`.
fn admin_db(admin: &tokio_postgres::Config, db: &str) -> tokio_postgres::Config {
    let mut c = admin.clone();
    c.dbname(db);
    c
}

/// pgbench doing three synchronous commits per "job": the PostgreSQL ceiling for our design.
fn pgbench(
    bindir: &Path,
    socket: &Path,
    db: &str,
    concurrency: usize,
    seconds: u64,
    dir: &Path,
) -> Option<f64> {
    let script = dir.join("three-commits.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 2000000000)\n\
         INSERT INTO bench_jobs (id, status, body) VALUES (:id, 'pending', '{}') ON CONFLICT (id) DO NOTHING;\n\
         UPDATE bench_jobs SET status = 'confirming' WHERE id = :id;\n\
         UPDATE bench_jobs SET status = 'completed' WHERE id = :id;\n",
    )
    .ok()?;
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bindir.join(args[0]));
        cmd.args(&args[1..]);
        if let Some((uid, gid)) = postgres_ids() {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.output().ok()
    };
    let sock = socket.to_string_lossy().to_string();
    run(&[
        "psql",
        "-h",
        &sock,
        "-U",
        "postgres",
        "-d",
        db,
        "-q",
        "-c",
        "CREATE TABLE IF NOT EXISTS bench_jobs (id bigint PRIMARY KEY, status text, body jsonb)",
    ])?;
    // PostgreSQL's default max_connections is 100.
    let c = concurrency.min(64).to_string();
    let t = seconds.to_string();
    let script_arg = script.to_string_lossy().to_string();
    let out = run(&[
        "pgbench",
        "-h",
        &sock,
        "-U",
        "postgres",
        "-n",
        "-c",
        &c,
        "-j",
        "2",
        "-T",
        &t,
        "-f",
        &script_arg,
        db,
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
}

fn postgres_ids() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres"))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

type Series = (String, Vec<(usize, f64)>);

/// One line chart against concurrency (log scale), drawn at vertical offset `top`.
fn panel(s: &mut String, top: f64, title: &str, series: &[Series]) {
    let (w, h, pad) = (720.0, 380.0, 60.0);
    let max_c = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(c, _)| *c))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_y = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(1.0f64, f64::max)
        * 1.1;
    let x = |c: usize| pad + ((c as f64).ln_1p() / max_c.ln_1p()) * (w - 2.0 * pad);
    let y = |v: f64| top + h - pad - v / max_y * (h - 2.0 * pad);
    let _ = writeln!(
        s,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"15\">{title}</text>",
        top + 24.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        top + h - pad,
        w - pad,
        top + h - pad
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>",
        top + pad,
        top + h - pad
    );
    for frac in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let v = max_y * frac;
        let _ = writeln!(s, "<text x=\"6\" y=\"{:.0}\">{v:.0}</text>", y(v) + 4.0);
    }
    let mut cs: Vec<usize> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(c, _)| *c))
        .collect();
    cs.sort();
    cs.dedup();
    for c in &cs {
        let _ = writeln!(
            s,
            "<text x=\"{:.0}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
            x(*c),
            top + h - pad + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">concurrency (clients)</text>",
        w / 2.0,
        top + h - pad + 36.0
    );
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf", "#393b79", "#637939",
    ];
    // A series and its p99 share a colour (the p99 dashed) and one legend line.
    let mut bases: Vec<&str> = Vec::new();
    for (name, pts) in series {
        let base = name.trim_end_matches(" p50").trim_end_matches(" p99");
        let i = match bases.iter().position(|b| *b == base) {
            Some(i) => i,
            None => {
                bases.push(base);
                let i = bases.len() - 1;
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{}\" fill=\"{}\">{base}</text>",
                    pad + 16.0,
                    top + pad + 16.0 * i as f64,
                    colors[i % colors.len()]
                );
                i
            }
        };
        let color = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(c, v)| format!("{:.1},{:.1}", x(*c), y(*v)))
            .collect();
        let dash = if name.ends_with(" p99") {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
    }
}

fn svg(points: &[Point], ceiling: &[(usize, f64)]) -> String {
    let mut tasks: Vec<usize> = points.iter().map(|p| p.tasks).collect();
    tasks.sort();
    tasks.dedup();
    let of = |system: System, t: usize, f: fn(&Point) -> f64| -> Vec<(usize, f64)> {
        points
            .iter()
            .filter(|p| p.system == system && p.tasks == t)
            .map(|p| (p.concurrency, f(p)))
            .collect()
    };
    let systems: Vec<System> = [
        System::Ours,
        System::Dtmrs,
        System::Atomikos,
        System::Callback,
        System::Sweep,
        System::Dtm,
    ]
    .into_iter()
    .filter(|s| points.iter().any(|p| p.system == *s))
    .collect();
    let mut throughput: Vec<Series> = Vec::new();
    let mut latency: Vec<Series> = Vec::new();
    for system in &systems {
        for t in &tasks {
            let name = format!("{}, {t} task(s)", system.name());
            throughput.push((name.clone(), of(*system, *t, |p| p.per_sec)));
            latency.push((format!("{name} p50"), of(*system, *t, |p| p.p50)));
            latency.push((format!("{name} p99"), of(*system, *t, |p| p.p99)));
        }
    }
    if !ceiling.is_empty() {
        throughput.push((
            "PostgreSQL ceiling: pgbench, 3 synchronous commits per job (at most 64 clients)"
                .into(),
            ceiling.to_vec(),
        ));
    }
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"760\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
    );
    panel(
        &mut s,
        0.0,
        "Completed jobs/s against concurrency",
        &throughput,
    );
    panel(
        &mut s,
        380.0,
        "Latency from POST /jobs to the last confirm received (ms): p50 solid, p99 dashed",
        &latency,
    );
    s.push_str("</svg>\n");
    s
}

fn main() {
    let o = opts();
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let pg_dir = std::env::temp_dir().join(format!("tcc-bench-{}", std::process::id()));
    let pg = EmbeddedPostgres::start(&pg_dir).expect("start PostgreSQL");
    let bindir = tcc_coordinator::embedded_pg::find_bindir().expect("PostgreSQL binaries");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = BENCH_DB;
    let admin = pg.config_for("postgres");
    runtime.block_on(async {
        create_database(&admin, db)
            .await
            .expect("create the database")
    });
    let db_url = format!(
        "host={} port=5432 user=postgres dbname={db}",
        pg.socket_dir().display()
    );

    let (points, ceiling, idle) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind stubs");
        let stubs = Stubs {
            base: format!("http://{}", listener.local_addr().expect("addr")),
            waiting: Arc::new(Mutex::new(HashMap::new())),
        };
        let app = Router::new()
            .route("/try/{name}", post(stub_try))
            .route("/r/{corr}/{task}", put(stub_confirm).delete(stub_cancel))
            .route("/dtm/confirm/{corr}/{task}", post(stub_dtm_confirm))
            .route("/dtm/cancel/{corr}/{task}", post(stub_dtm_cancel))
            .route("/callback", post(|| async { StatusCode::NO_CONTENT }))
            .with_state(stubs.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        // Every request carries the key (the stubs and dtmrs ignore it).
        let mut headers = reqwest::header::HeaderMap::new();
        if !o.bare
            && let Ok(bearer) = reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_KEY}"))
        {
            headers.insert(reqwest::header::AUTHORIZATION, bearer);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let postmaster = pg.postmaster_pid();
        let run_points = |server: Server, db: &'static str| {
            let (stubs, http, admin, o) = (stubs.clone(), http.clone(), admin.clone(), &o);
            async move {
                let mut points = Vec::new();
                for &t in &o.tasks {
                    for &c in &o.concurrency {
                        let how = Measuring { features: !o.bare, wal_stats: o.wal_stats };
                        let p = measure(&server, &stubs, &http, t, c, o.seconds, &admin, db, postmaster, how).await;
                        println!(
                            "{:<15} tasks={} concurrency={:<4} jobs={:<6} jobs/s={:>8.1} p50={:>7.1}ms p95={:>7.1}ms p99={:>7.1}ms xacts/job={:.2} wal-flushes/job={:.2} wal-kib/job={:.1} wal-records/job={:.1} cpu-s/1000={:.2} pg-cpu-s/1000={:.2} harness-cpu-s/1000={:.2} rss={:.0}MiB",
                            p.label(), p.tasks, p.concurrency, p.jobs, p.per_sec, p.p50, p.p95, p.p99, p.commits_per_job, p.wal_syncs_per_job, p.wal_kb_per_job, p.wal_records_per_job, p.cpu_per_1000, p.pg_cpu_per_1000, p.harness_cpu_per_1000, p.rss_mib
                        );
                        points.push(p);
                    }
                }
                (server, points)
            }
        };

        let mut points = Vec::new();
        if o.pairs > 0 {
            let bin = dtmrs_binary(&out_dir).expect("dtmrs, for --pairs");
            create_database(&admin, DTMRS_DB)
                .await
                .expect("create the dtmrs database");
            let dtm = start_dtmrs(&bin, pg.socket_dir(), DTMRS_DB);
            wait_ready(&http, &dtm, "/health").await;
            let ours = start_coordinator(&db_url, 1, !o.bare);
            wait_ready(&http, &ours, "/health/ready").await;
            let how = Measuring { features: !o.bare, wal_stats: false };
            for &t in &o.tasks {
                for &c in &o.concurrency {
                    let mut ratios = Vec::new();
                    for pair in 1..=o.pairs {
                        // The second of two runs seconds apart can gain a few per cent from the
                        // order alone (docs/performance.md): odd pairs run this coordinator first,
                        // even pairs dtmrs first.
                        let ours_first = pair % 2 == 1;
                        let mut b = Point::default();
                        if !ours_first {
                            b = measure(&dtm, &stubs, &http, t, c, o.seconds, &admin, DTMRS_DB, postmaster, how).await;
                        }
                        let a = measure(&ours, &stubs, &http, t, c, o.seconds, &admin, db, postmaster, how).await;
                        if ours_first {
                            b = measure(&dtm, &stubs, &http, t, c, o.seconds, &admin, DTMRS_DB, postmaster, how).await;
                        }
                        let ratio = if b.per_sec > 0.0 { a.per_sec / b.per_sec } else { 0.0 };
                        let cpu = |p: &Point| p.cpu_per_1000 + p.pg_cpu_per_1000 + p.harness_cpu_per_1000;
                        println!(
                            "pair {pair} ({} first) tasks={t} concurrency={c:<4} ours jobs/s={:>8.1} cpu-ms/job={:.2} xacts/job={:.2}  dtmrs jobs/s={:>7.1} cpu-ms/job={:.2}  ours/dtmrs={ratio:.2}x",
                            if ours_first { "ours" } else { "dtmrs" },
                            a.per_sec, cpu(&a), a.commits_per_job, b.per_sec, cpu(&b)
                        );
                        ratios.push(ratio);
                        points.push(a);
                        points.push(b);
                    }
                    ratios.sort_by(f64::total_cmp);
                    // An even count's median is the mean of its middle two, not the upper one.
                    let mid = ratios.len() / 2;
                    let median = if ratios.len() % 2 == 0 { (ratios[mid - 1] + ratios[mid]) / 2.0 } else { ratios[mid] };
                    println!(
                        "tasks={t} concurrency={c}: ours / dtmrs, pair by pair {:?}, median {median:.2}x",
                        ratios.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>(),
                    );
                }
            }
            drop(ours);
            drop(dtm);
            return (points, Vec::new(), None);
        }
        let mut idle = None;
        for &n in &o.instances {
            let coordinator = start_coordinator(&db_url, n, !o.bare);
            wait_ready(&http, &coordinator, "/health/ready").await;
            let (mut coordinator, ours) = run_points(coordinator, db).await;
            points.extend(ours);
            if o.atomikos && n == 1 {
                coordinator.system = System::Atomikos;
                let (c, theirs) = run_points(coordinator, db).await;
                points.extend(theirs);
                coordinator = c;
                coordinator.system = System::Ours;
            }
            if o.dtmrs && n == 1 {
                coordinator.system = System::Dtm;
                let (c, theirs) = run_points(coordinator, db).await;
                points.extend(theirs);
                coordinator = c;
                coordinator.system = System::Ours;
            }
            if o.callback && n == 1 {
                coordinator.system = System::Callback;
                let (c, theirs) = run_points(coordinator, db).await;
                points.extend(theirs);
                coordinator = c;
                coordinator.system = System::Ours;
            }
            if o.sweep > 0 && n == 1 {
                age_jobs(&admin, db, o.sweep).await;
                // Measure once the sweep is under way (it looks every few seconds).
                let until = Instant::now() + Duration::from_secs(30);
                while count_jobs(&admin, db, OLD).await.unwrap_or(0) >= o.sweep as i64
                    && Instant::now() < until
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let before = count_jobs(&admin, db, OLD).await.unwrap_or(0);
                coordinator.system = System::Sweep;
                let (c, theirs) = run_points(coordinator, db).await;
                points.extend(theirs);
                coordinator = c;
                coordinator.system = System::Ours;
                let after = count_jobs(&admin, db, OLD).await.unwrap_or(0);
                println!(
                    "sweep: {} of {} old jobs deleted while measuring ({before} → {after} left)",
                    before - after,
                    o.sweep
                );
            }
            if o.idle > 0 && idle.is_none() && n == 1 {
                idle = Some(park(&coordinator, &stubs, &http, o.idle, &admin, db).await);
            }
        }
        if o.dtmrs
            && let Some(bin) = dtmrs_binary(&out_dir)
        {
            create_database(&admin, DTMRS_DB)
                .await
                .expect("create the dtmrs database");
            let server = start_dtmrs(&bin, pg.socket_dir(), DTMRS_DB);
            wait_ready(&http, &server, "/health").await;
            let (server, theirs) = run_points(server, DTMRS_DB).await;
            drop(server);
            points.extend(theirs);
        }
        let mut ceiling = Vec::new();
        if o.pgbench {
            for &c in &o.concurrency {
                if let Some(tps) = pgbench(&bindir, pg.socket_dir(), db, c, o.seconds, &pg_dir) {
                    println!(
                        "pgbench concurrency={:<4} jobs/s={tps:.1} (3 synchronous commits each)",
                        c.min(64)
                    );
                    ceiling.push((c, tps));
                }
            }
        }
        (points, ceiling, idle)
    });
    let _ = pg.stop();
    let _ = std::fs::remove_dir_all(&pg_dir);

    let mut md = String::from(
        "| system | tasks | concurrency | jobs/s | p50 ms | p95 ms | p99 ms | transactions/job (reads included) | WAL flushes/job | WAL KiB/job | WAL records/job | CPU s/1000 jobs | PostgreSQL CPU s/1000 jobs | harness CPU s/1000 jobs | peak RSS MiB | vs ceiling | ours / dtmrs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, p) in points.iter().enumerate() {
        let ratio = ceiling
            .iter()
            .find(|(c, _)| *c == p.concurrency)
            .map(|(_, tps)| format!("{:.2}", p.per_sec / tps))
            .unwrap_or_else(|| "–".into());
        let versus = match p.system {
            // The first dtmrs point after this one: dtmrs runs after this coordinator's points,
            // or (`--pairs`) right after each of them.
            System::Ours | System::Dtm => points[i..]
                .iter()
                .find(|q| {
                    q.system == System::Dtmrs
                        && p.instances == 1
                        && q.tasks == p.tasks
                        && q.concurrency == p.concurrency
                })
                .filter(|q| q.per_sec > 0.0)
                .map(|q| format!("{:.1}×", p.per_sec / q.per_sec))
                .unwrap_or_else(|| "–".into()),
            System::Dtmrs | System::Atomikos | System::Callback | System::Sweep => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {ratio} | {versus} |",
            p.label(),
            p.tasks,
            p.concurrency,
            p.per_sec,
            p.p50,
            p.p95,
            p.p99,
            p.commits_per_job,
            p.wal_syncs_per_job,
            p.wal_kb_per_job,
            p.wal_records_per_job,
            p.cpu_per_1000,
            p.pg_cpu_per_1000,
            p.harness_cpu_per_1000,
            p.rss_mib
        );
    }
    let best = |system: System, tasks: usize| {
        points
            .iter()
            .filter(|p| p.system == system && p.instances == 1 && p.tasks == tasks)
            .map(|p| p.per_sec)
            .fold(0.0f64, f64::max)
    };
    let mut tasks: Vec<usize> = points.iter().map(|p| p.tasks).collect();
    tasks.sort();
    tasks.dedup();
    let best_ceiling = ceiling.iter().map(|(_, t)| *t).fold(0.0f64, f64::max);
    md.push_str("\n| tasks | best jobs/s, ours | best, dtmrs | ours / dtmrs | ours / best ceiling |\n|---|---|---|---|---|\n");
    for t in tasks {
        let (ours, theirs) = (best(System::Ours, t), best(System::Dtmrs, t));
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            md,
            "| {t} | {ours:.1} | {} | {} | {} |",
            if theirs > 0.0 {
                format!("{theirs:.1}")
            } else {
                "–".into()
            },
            ratio(ours, theirs),
            ratio(ours, best_ceiling)
        );
    }
    if !ceiling.is_empty() {
        md.push_str("\n| pgbench clients | jobs/s (3 synchronous commits each) |\n|---|---|\n");
        for (c, tps) in &ceiling {
            let _ = writeln!(md, "| {} | {tps:.1} |", c.min(&64));
        }
    }
    if let Some((n, rss, cpu)) = idle {
        let _ = writeln!(
            md,
            "\n{n} jobs waiting in `reserved`: coordinator RSS {rss:.0} MiB, idle CPU {:.2} % of a core",
            cpu * 100.0
        );
    }
    let _ = std::fs::write(out_dir.join("e2e.md"), &md);
    let single: Vec<Point> = points
        .iter()
        .filter(|p| p.instances == 1)
        .cloned()
        .collect();
    let _ = std::fs::write(out_dir.join("e2e.svg"), svg(&single, &ceiling));
    println!("\n{md}\nwritten: {}", out_dir.join("e2e.md").display());
}
