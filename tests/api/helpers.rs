//! The test harness: one PostgreSQL per test binary (the embedded mechanism, or `DATABASE_URL`),
//! a fresh database per test, and the coordinator started on port 0 — in process, or as the real
//! binary when a test must kill it.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use tcc_coordinator::config::Config;
use tcc_coordinator::embedded_pg::{EmbeddedPostgres, create_database};
use tcc_coordinator::startup::Application;
use tokio::sync::oneshot;

/// How long any condition may take before a test gives up. Generous: a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

struct Cluster {
    /// A connection string template: `{db}` is replaced by the database name.
    template: String,
    admin: tokio_postgres::Config,
    _embedded: Option<EmbeddedPostgres>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

fn cluster() -> &'static Cluster {
    let c = CLUSTER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let parsed = url::Url::parse(&url).map_err(|e| format!("DATABASE_URL: {e}"))?;
            let mut template = parsed.clone();
            template.set_path("/DBNAME");
            let admin = url.parse().map_err(|e| format!("DATABASE_URL: {e}"))?;
            return Ok(Cluster {
                template: template.to_string().replace("DBNAME", "{db}"),
                admin,
                _embedded: None,
            });
        }
        let dir = test_pg_dir();
        let pg = EmbeddedPostgres::start(&dir).map_err(|e| e.to_string())?;
        let template = format!(
            "host={} port=5432 user=postgres dbname={{db}}",
            pg.socket_dir().display()
        );
        Ok(Cluster {
            template,
            admin: pg.config_for("postgres"),
            _embedded: Some(pg),
        })
    });
    match c {
        Ok(c) => c,
        Err(e) => panic!("no PostgreSQL for the tests: {e}"),
    }
}

/// A private directory for the test cluster, outside the checkout: the cluster may run as the
/// `postgres` user, which cannot always reach the checkout (under /root, say), and socket paths
/// are short. One per checkout, so that two checkouts do not share a cluster.
fn test_pg_dir() -> std::path::PathBuf {
    let checkout = env!("CARGO_MANIFEST_DIR");
    let tag: u32 = checkout.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    std::env::temp_dir().join(format!("tcc-test-pg-{tag:08x}"))
}

/// A new, empty database; returns its connection string.
pub async fn fresh_database() -> String {
    let c = cluster();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    create_database(&c.admin, &name)
        .await
        .expect("create the test database");
    c.template.replace("{db}", &name)
}

#[derive(Parser)]
#[command(args_override_self = true)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

/// Settings for tests: port 0, quick scans, short leases. `extra` flags override.
pub fn test_config(db: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "tcc".to_string(),
        "--database-url".into(),
        db.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--scan-interval".into(),
        "50ms".into(),
        "--lease-ttl".into(),
        "4s".into(),
        "--call-timeout".into(),
        "2s".into(),
        "--shutdown-grace".into(),
        "2s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    TestCli::try_parse_from(args).expect("test config").config
}

/// A coordinator running in this process.
pub struct TestApp {
    pub addr: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let db = fresh_database().await;
    spawn_app_on(&db, extra).await
}

pub async fn spawn_app_on(db: &str, extra: &[&str]) -> TestApp {
    let config = test_config(db, extra);
    let parsed: tokio_postgres::Config = db.parse().expect("database string");
    let app = Application::build(&config, &parsed)
        .await
        .expect("build the app");
    let addr = format!("http://{}", app.local_addr().expect("address"));
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        http: reqwest::Client::new(),
        stop: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let result = tokio::time::timeout(PATIENCE, h)
                .await
                .expect("shutdown in time");
            result.expect("app task").expect("app result");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// `POST {path}` with no body.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.http.post(self.url(path)).send().await.expect("POST")
    }

    /// `DELETE {path}`.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE")
    }

    /// `GET {path}`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    /// Submit a job that must be accepted; returns its id.
    pub async fn submit(&self, job: &Value) -> String {
        submit_to(&self.http, &self.addr, job).await
    }

    pub async fn get_job(&self, id: &str) -> Value {
        get_json(&self.http, &self.url(&format!("/jobs/{id}"))).await
    }

    /// Wait for the job to reach `status`; returns its representation ([`wait_for_status`]).
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        wait_for_status(&self.http, &self.addr, id, status).await
    }

    /// How many jobs `GET /jobs?{query}` lists (at most 500).
    pub async fn count_jobs(&self, query: &str) -> usize {
        let body = get_json(&self.http, &self.url(&format!("/jobs?limit=500&{query}"))).await;
        body["jobs"].as_array().map_or(usize::MAX, Vec::len)
    }

    pub async fn job_count(&self) -> usize {
        self.count_jobs("").await
    }
}

/// A client that sends `secret` as its API key (`Authorization: Bearer`) with every request.
pub fn client_with_key(secret: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {secret}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// Submit a job to the coordinator at `base`; it must be accepted. Returns its id.
pub async fn submit_to(http: &reqwest::Client, base: &str, job: &Value) -> String {
    let resp = http
        .post(format!("{base}/jobs"))
        .json(job)
        .send()
        .await
        .expect("POST /jobs");
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 202, "job not accepted: {body}");
    body["jobID"].as_str().expect("jobID").to_string()
}

/// `GET url`, which must answer 200 with JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let resp = http.get(url).send().await.expect("GET");
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.json().await.expect("json")
}

/// How often [`eventually`] and [`eventually_some`] look.
const POLL: Duration = Duration::from_millis(20);

/// The one way the tests wait: look with `probe` every `every` until it yields a value, or until
/// `limit` has passed (`None`). [`eventually`] and [`eventually_some`] wait so with the patience.
pub async fn poll_within<T, F, Fut>(limit: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Poll `probe` until it yields a value or the patience runs out (`None`).
pub async fn eventually_some<T, F, Fut>(probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_within(PATIENCE, POLL, probe).await
}

/// Poll `cond` until it holds or the patience runs out. Returns whether it held.
pub async fn eventually<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(|| {
        let held = cond();
        async move { held.await.then_some(()) }
    })
    .await
    .is_some()
}

pub fn task<'a>(job: &'a Value, id: &str) -> &'a Value {
    job["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["taskID"] == id))
        .unwrap_or_else(|| panic!("no task {id} in {job:#}"))
}

/// A job document with one Try task per `(taskID, taskURL)`.
pub fn job_of(tasks: &[(&str, String)]) -> Value {
    json!({
        "tasks": tasks.iter().map(|(id, url)| json!({"taskID": id, "taskURL": url})).collect::<Vec<_>>()
    })
}

/// The coordinator as a separate process, for tests that must kill it.
pub struct Process {
    pub child: Child,
    pub addr: String,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn start_process(db: &str, instance: &str) -> Process {
    start_process_with(db, instance, &[])
}

/// The coordinator binary with short leases and quick scans; `env` overrides or adds settings.
pub fn start_process_with(db: &str, instance: &str, env: &[(&str, &str)]) -> Process {
    start_process_via(&[], db, instance, env)
}

/// As [`start_process_with`], started through `wrapper` (a program and its arguments, which
/// end by running the binary given to them last, followed by `serve`).
pub fn start_process_via(
    wrapper: &[&str],
    db: &str,
    instance: &str,
    env: &[(&str, &str)],
) -> Process {
    let port = free_port();
    let binary = env!("CARGO_BIN_EXE_tcc-coordinator");
    let mut cmd = match wrapper.split_first() {
        None => Command::new(binary),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
    };
    cmd.arg("serve")
        .env("DATABASE_URL", db)
        .env("TCC_LISTEN", format!("127.0.0.1:{port}"))
        .env("TCC_INSTANCE_ID", instance)
        .env("TCC_LEASE_TTL", "2s")
        .env("TCC_CALL_TIMEOUT", "1s")
        .env("TCC_SCAN_INTERVAL", "50ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start the coordinator binary");
    Process {
        child,
        addr: format!("http://127.0.0.1:{port}"),
    }
}

impl Process {
    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let url = format!("{}/health/ready", self.addr);
        let ready =
            eventually(|| async { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) })
                .await;
        assert!(ready, "the coordinator process never became ready");
    }

    /// SIGKILL: no shutdown, no lease released.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process (a tool a test runs beside the coordinator), killed when the test ends,
/// however it ends.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until the job at `base` reaches `status`; returns its representation in that status.
/// The one way the tests wait for a status ([`TestApp::wait_status`] calls it).
pub async fn wait_for_status(http: &reqwest::Client, base: &str, id: &str, status: &str) -> Value {
    let url = format!("{base}/jobs/{id}");
    let reached = eventually_some(|| async {
        let job = get_json(http, &url).await;
        (job["jobStatus"] == status).then_some(job)
    })
    .await;
    match reached {
        Some(job) => job,
        None => panic!(
            "job {id} never reached {status}; last: {:#}",
            get_json(http, &url).await
        ),
    }
}

/// What a finished program printed, its standard output then its standard error.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A program on PATH (or in /usr/bin), or `None` outside CI, saying the test skipped.
pub fn tool(names: &[&str], package: &str) -> Option<std::path::PathBuf> {
    let dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let found = names.iter().find_map(|n| {
        dirs.iter()
            .chain([std::path::PathBuf::from("/usr/bin")].iter())
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing ({package}); under CI that is a failure",
            names[0]
        );
        eprintln!("skipped: {} is not installed ({package})", names[0]);
    }
    found
}

/// A header as text; `None` when absent or not visible ASCII. The one way the tests (and their
/// participants) read a header.
pub fn header_in(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A response header as text; `None` when absent or not visible ASCII.
pub fn header_opt(r: &reqwest::Response, name: &str) -> Option<String> {
    header_in(r.headers(), name)
}

/// A response header as text ("" when absent or not visible ASCII).
pub fn header_text(r: &reqwest::Response, name: &str) -> String {
    header_opt(r, name).unwrap_or_default()
}

// ---- Prometheus: the one reader of the text exposition ----

/// One sample of a scrape: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A `/metrics` scrape: the exposition text, and its samples.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Read a Prometheus text exposition.
    pub fn parse(text: String) -> Scrape {
        Scrape {
            samples: parse_exposition(&text),
            text,
        }
    }

    /// The value of the one series `name{labels}` (exactly those labels), if it is exported.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// The sum of every series of `name` that has (at least) these labels; 0 when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every series of `name`.
    pub fn series(&self, name: &str) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The `# TYPE` the scrape gives a metric family.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.text.lines().find_map(|l| {
            let rest = l.strip_prefix("# TYPE ")?;
            let (name, kind) = rest.split_once(' ')?;
            (name == family).then_some(kind.trim())
        })
    }

    /// The names of every series exported.
    pub fn names(&self) -> HashSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Our label values never hold `",`; a simple split is enough for the coordinator's text.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// `GET {addr}/metrics`, read (empty when the coordinator does not answer).
pub async fn scrape(http: &reqwest::Client, addr: &str) -> Scrape {
    let text = match http.get(format!("{addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    Scrape::parse(text)
}

/// Scrape until `cond` holds (the database gauges are read every few seconds); the scrape that
/// showed it.
pub async fn scrape_until(
    http: &reqwest::Client,
    addr: &str,
    what: &str,
    cond: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let every = Duration::from_millis(100);
    let shown = poll_within(PATIENCE, every, || async {
        let s = scrape(http, addr).await;
        cond(&s).then_some(s)
    })
    .await;
    match shown {
        Some(s) => s,
        None => panic!(
            "{addr}: never {what}; last scrape:\n{}",
            scrape(http, addr).await.text
        ),
    }
}

/// One request, with an API key when given: its status, headers and JSON body (`Null` when it
/// has none).
pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    secret: Option<&str>,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(s) = secret {
        req = req.bearer_auth(s);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}
