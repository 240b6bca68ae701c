//! Every setting, typed and validated once at start-up (docs/operations.md, README "Settings").
//!
//! Each setting is a `--flag` and an environment variable; a bad value stops start-up with a
//! message that names the setting. The rest of the program trusts what it gets from here.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

/// A duration given as seconds (`1.5`) or with a unit (`500ms`, `30s`, `10m`, `2h`, `30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("{s:?} is not a duration (examples: 1.5, 500ms, 30s, 10m, 2h, 30d)")
        })?;
        let factor = match unit.trim() {
            "" | "s" => 1.0,
            "ms" => 0.001,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            other => return Err(format!("unknown unit {other:?} (use ms, s, m, h or d)")),
        };
        let secs = n * factor;
        if !secs.is_finite() || !(0.0..=10.0 * 365.0 * 86_400.0).contains(&secs) {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(Span(Duration::from_secs_f64(secs)))
    }
}

/// A size in bytes, plain or with `KiB`/`MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub usize);

impl FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (num, factor) = if let Some(n) = s.strip_suffix("MiB") {
            (n, 1024 * 1024)
        } else if let Some(n) = s.strip_suffix("KiB") {
            (n, 1024)
        } else {
            (s, 1)
        };
        let n: usize = num
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512KiB, 1MiB)"))?;
        let bytes = n.checked_mul(factor).ok_or("too large")?;
        if !(1024..=64 * 1024 * 1024).contains(&bytes) {
            return Err("must be between 1KiB and 64MiB".into());
        }
        Ok(Bytes(bytes))
    }
}

/// An address to listen on: `host:port` with a host name or an IP (`[::1]:8080` for IPv6), or
/// `:port` for every interface. Host names are resolved when the listener is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    pub host: String,
    pub port: u16,
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{s:?} is not host:port or :port (examples: 127.0.0.1:8080, localhost:8080, [::1]:8080, :8080)"
            )
        };
        let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = if host.is_empty() {
            "0.0.0.0".to_string()
        } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            v6.to_string()
        } else if host.parse::<std::net::Ipv4Addr>().is_ok()
            || (host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                }))
        {
            host.to_string()
        } else {
            return Err(bad());
        };
        Ok(ListenAddr { host, port })
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when the output is a terminal.
    Text,
    /// One JSON object a line.
    Json,
}

fn parse_public_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!("{s:?} must be an absolute http or https URL"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// A URL that may carry a secret (credentials, a token in its path): errors never repeat it.
fn parse_webhook_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err("must be an absolute http or https URL".into());
    }
    Ok(s.to_string())
}

fn parse_smtp_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "smtp" | "smtps") || u.host().is_none() {
        return Err("must be smtp://host[:port][?tls=required] or smtps://host[:port]".into());
    }
    // lettre's own message may quote a part of the URL: say what is expected instead.
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(s)
        .map(|_| s.to_string())
        .map_err(|_| {
            "not an SMTP server URL: smtp://[user:password@]host[:port][?tls=required] or smtps://…"
                .to_string()
        })
}

fn parse_mailbox(s: &str) -> Result<String, String> {
    s.parse::<lettre::message::Mailbox>()
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?} is not an email address: {e}"))
}

fn parse_pg(s: &str) -> Result<tokio_postgres::Config, String> {
    tokio_postgres::Config::from_str(s)
        .map_err(|e| format!("not a PostgreSQL connection string: {e}"))
}

fn parse_max_tasks(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1..=10_000).contains(&n) {
        return Err("must be between 1 and 10000".into());
    }
    Ok(n)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

fn parse_instance_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must be 1 to 128 printable characters without spaces".into());
    }
    Ok(s.to_string())
}

/// The coordinator's settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL to use (a URL or key=value string). Unset: the embedded PostgreSQL under
    /// TCC_DATA_DIR.
    #[arg(long, env = "DATABASE_URL", value_name = "DATABASE_URL", value_parser = parse_pg, global = true, hide_env_values = true)]
    pub database_url: Option<tokio_postgres::Config>,

    /// Where the embedded PostgreSQL keeps its data and its socket.
    #[arg(
        long,
        env = "TCC_DATA_DIR",
        value_name = "TCC_DATA_DIR",
        default_value = "./.tcc",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Address of the HTTP API: host:port (a host name or an IP) or :port for every interface.
    #[arg(
        long,
        env = "TCC_LISTEN",
        value_name = "TCC_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: ListenAddr,

    /// A second address serving only /metrics (same forms as TCC_LISTEN).
    #[arg(
        long,
        env = "TCC_METRICS_LISTEN",
        value_name = "TCC_METRICS_LISTEN",
        global = true
    )]
    pub metrics_listen: Option<ListenAddr>,

    /// Log format: text (colour only on a terminal) or json (one object a line).
    #[arg(
        long,
        env = "TCC_LOG_FORMAT",
        value_name = "TCC_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Base of the absolute links the API writes; unset: taken from each request's Host.
    #[arg(long, env = "TCC_PUBLIC_URL", value_name = "TCC_PUBLIC_URL", value_parser = parse_public_url, global = true)]
    pub public_url: Option<String>,

    /// Name of this instance in leases; default: host name, process id and a random suffix.
    #[arg(long, env = "TCC_INSTANCE_ID", value_name = "TCC_INSTANCE_ID", value_parser = parse_instance_id, global = true)]
    pub instance_id: Option<String>,

    /// Every link must outlive now + this margin when the job is confirmed.
    #[arg(
        long,
        env = "TCC_CONFIRM_MARGIN",
        value_name = "TCC_CONFIRM_MARGIN",
        default_value = "1s",
        global = true
    )]
    pub confirm_margin: Span,

    /// How long after the decision the confirm or cancel of a task with its own confirm and
    /// cancel URLs is retried; a confirm still failing then makes the task heuristic.
    #[arg(
        long,
        env = "TCC_CALLBACK_HORIZON",
        value_name = "TCC_CALLBACK_HORIZON",
        default_value = "24h",
        global = true
    )]
    pub callback_horizon: Span,

    /// Most tasks in one job.
    #[arg(long, env = "TCC_MAX_TASKS", value_name = "TCC_MAX_TASKS", default_value = "100", value_parser = parse_max_tasks, global = true)]
    pub max_tasks: usize,

    /// Largest request body.
    #[arg(
        long,
        env = "TCC_MAX_BODY",
        value_name = "TCC_MAX_BODY",
        default_value = "1MiB",
        global = true
    )]
    pub max_body: Bytes,

    /// How long finished jobs are kept, counted from when they finished. A heuristic job is kept
    /// until an operator resolves it (POST /jobs/{id}/resolve), then for as long again.
    #[arg(
        long,
        env = "TCC_RETENTION",
        value_name = "TCC_RETENTION",
        default_value = "30d",
        global = true
    )]
    pub retention: Span,

    /// API keys, `name:role:secret,...` (roles `read` < `submit` < `admin`; secrets at least 16
    /// characters), sent as `Authorization: Bearer <secret>`. Unset: the API is open to anyone
    /// who can reach it.
    /// (Read as text and parsed by `validate`, so that an error never repeats a secret.)
    #[arg(
        long = "api-keys",
        env = "TCC_API_KEYS",
        value_name = "TCC_API_KEYS",
        global = true,
        hide_env_values = true
    )]
    pub api_keys_raw: Option<String>,

    /// The secret that signs every callback and webhook: `tcc-signature: sha256=<hex HMAC-SHA256
    /// of the body>`. Unset: deliveries are not signed.
    #[arg(
        long,
        env = "TCC_WEBHOOK_SECRET",
        value_name = "TCC_WEBHOOK_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,

    /// The operators' webhook: told of every heuristic outcome (as the job's contact is).
    #[arg(long, env = "TCC_HEURISTIC_WEBHOOK", value_name = "TCC_HEURISTIC_WEBHOOK", value_parser = parse_webhook_url, global = true, hide_env_values = true)]
    pub heuristic_webhook: Option<String>,

    /// The hosts the coordinator may call (task URLs, participant links, callbacks, webhooks):
    /// `*`, or a comma-separated list of host names, `*.`wildcards, IPs and CIDR blocks.
    /// Link-local and cloud-metadata addresses (169.254.0.0/16, fe80::/10) are refused unless
    /// listed as an IP or CIDR. Checked when a request names a URL (422) and again, after DNS
    /// resolution, when it is called.
    #[arg(
        long,
        env = "TCC_ALLOWED_TARGETS",
        value_name = "TCC_ALLOWED_TARGETS",
        default_value = "*",
        global = true
    )]
    pub allowed_targets: crate::domain::policy::TargetPolicy,

    /// The SMTP server that email goes through: `smtp://host:port` (plain),
    /// `smtp://host:port?tls=required` (STARTTLS), `smtps://host:port` (TLS); credentials in the
    /// URL (`smtp://user:password@host`). Unset: no email is sent (a heuristic job's
    /// `contact.email` notification fails, saying so).
    #[arg(long, env = "TCC_SMTP_URL", value_name = "TCC_SMTP_URL", value_parser = parse_smtp_url, global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// The sender of email (`TCC_SMTP_URL`).
    #[arg(long, env = "TCC_SMTP_FROM", value_name = "TCC_SMTP_FROM", default_value = "tcc-coordinator@localhost", value_parser = parse_mailbox, global = true)]
    pub smtp_from: String,

    /// How long a notification is retried before it is given up as failed.
    #[arg(
        long,
        env = "TCC_NOTIFY_MAX_AGE",
        value_name = "TCC_NOTIFY_MAX_AGE",
        default_value = "24h",
        global = true
    )]
    pub notify_max_age: Span,

    /// How many distinct participants (host:port) `tcc_participant_calls_total` and
    /// `tcc_participant_call_duration_seconds` name; calls to the targets past these are
    /// counted as `participant="other"`.
    #[arg(long, env = "TCC_METRICS_MAX_PARTICIPANTS", value_name = "TCC_METRICS_MAX_PARTICIPANTS", default_value = "100", value_parser = parse_positive, global = true)]
    pub metrics_max_participants: usize,

    /// How long a new job without an `Idempotency-Key` (`POST /jobs`) waits for its first
    /// Tries' answers before it is stored, and its 202 with it: answers that come in time are
    /// stored with the job, and a decision they bring (confirm, or cancel) too, one synchronous
    /// write where there were two. Should the job never be stored (the coordinator stops, or the
    /// database refuses the write, within this time), its reservations lapse at the
    /// participants as a Try's whose answer never came. `0` stores every job first.
    #[arg(
        long,
        env = "TCC_TRY_FIRST_WAIT",
        value_name = "TCC_TRY_FIRST_WAIT",
        default_value = "50ms",
        global = true
    )]
    pub try_first_wait: Span,

    /// How long a job's lease lasts without renewal; another instance takes the job over after.
    #[arg(
        long,
        env = "TCC_LEASE_TTL",
        value_name = "TCC_LEASE_TTL",
        default_value = "30s",
        global = true
    )]
    pub lease_ttl: Span,

    /// How often to look for due retries and lapsed leases.
    #[arg(
        long,
        env = "TCC_SCAN_INTERVAL",
        value_name = "TCC_SCAN_INTERVAL",
        default_value = "1s",
        global = true
    )]
    pub scan_interval: Span,

    /// Timeout of one confirm or cancel call (a Try uses its taskMaxTTL).
    #[arg(
        long,
        env = "TCC_CALL_TIMEOUT",
        value_name = "TCC_CALL_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub call_timeout: Span,

    /// Most participant calls in flight at once; also how many idle keep-alive connections are
    /// kept per participant host.
    #[arg(long, env = "TCC_MAX_INFLIGHT_CALLS", value_name = "TCC_MAX_INFLIGHT_CALLS", default_value = "512", value_parser = parse_positive, global = true)]
    pub max_inflight_calls: usize,

    /// Most jobs driven at once by this instance.
    #[arg(long, env = "TCC_MAX_ACTIVE_JOBS", value_name = "TCC_MAX_ACTIVE_JOBS", default_value = "4096", value_parser = parse_positive, global = true)]
    pub max_active_jobs: usize,

    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "TCC_DB_POOL_SIZE", value_name = "TCC_DB_POOL_SIZE", default_value = "16", value_parser = parse_positive, global = true)]
    pub db_pool_size: usize,

    /// The time limit of one HTTP request (a long poll's `Prefer: wait` is capped below it);
    /// past it the request is answered 503.
    #[arg(
        long,
        env = "TCC_REQUEST_TIMEOUT",
        value_name = "TCC_REQUEST_TIMEOUT",
        default_value = "60s",
        global = true
    )]
    pub request_timeout: Span,

    /// Most HTTP requests in progress at once; beyond it requests are answered 503 with
    /// Retry-After at once, never queued. Requests that wait for a job to change (`Prefer:
    /// wait`, the Atomikos confirm) and event streams each have as many again of their own;
    /// health checks are never refused.
    #[arg(long, env = "TCC_MAX_INFLIGHT_REQUESTS", value_name = "TCC_MAX_INFLIGHT_REQUESTS", default_value = "1024", value_parser = parse_positive, global = true)]
    pub max_inflight_requests: usize,

    /// How long a client has to send a request's headers, counted from when it connects and
    /// again from the end of each response (so also how long an idle keep-alive connection is
    /// kept), and how long an answer may wait for the client to read it; past it the connection
    /// is closed. A request's body, too, must arrive within it (else 408), before the request
    /// takes its place among those in progress.
    #[arg(
        long,
        env = "TCC_HEADER_READ_TIMEOUT",
        value_name = "TCC_HEADER_READ_TIMEOUT",
        default_value = "30s",
        global = true
    )]
    pub header_read_timeout: Span,

    /// Most HTTP connections open at once; one more is answered 503 (a problem, with
    /// Retry-After) and closed. Keep it under the process's open-file limit, less the database
    /// pool and TCC_MAX_INFLIGHT_CALLS.
    #[arg(long, env = "TCC_MAX_CONNECTIONS", value_name = "TCC_MAX_CONNECTIONS", default_value = "4096", value_parser = parse_positive, global = true)]
    pub max_connections: usize,

    /// On SIGTERM, how long in-flight participant calls may take to finish before their jobs
    /// are handed back.
    #[arg(
        long,
        env = "TCC_SHUTDOWN_GRACE",
        value_name = "TCC_SHUTDOWN_GRACE",
        default_value = "10s",
        global = true
    )]
    pub shutdown_grace: Span,

    /// How long a request waits for the database (a connection, a read, a durable commit)
    /// before it is answered 503: a database that fails over or cannot commit is answered
    /// for, never waited on without end.
    #[arg(
        long,
        env = "TCC_DB_TIMEOUT",
        value_name = "TCC_DB_TIMEOUT",
        default_value = "5s",
        global = true
    )]
    pub db_timeout: Span,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// The API keys (`TCC_API_KEYS`); empty when unset. `validate` has checked them.
    pub fn api_keys(&self) -> crate::api::auth::ApiKeys {
        self.api_keys_raw
            .as_deref()
            .and_then(|raw| raw.parse().ok())
            .unwrap_or_default()
    }

    /// Rules that involve several settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(raw) = &self.api_keys_raw {
            raw.parse::<crate::api::auth::ApiKeys>()
                .map_err(|e| ConfigError::Invalid(format!("TCC_API_KEYS: {e}")))?;
        }
        if let Some(hook) = &self.heuristic_webhook
            && let Err(why) = self.allowed_targets.check_url(hook)
        {
            return Err(ConfigError::Invalid(format!("TCC_HEURISTIC_WEBHOOK {why}")));
        }
        if self.lease_ttl.0 < self.call_timeout.0 * 2 {
            return Err(ConfigError::Invalid(format!(
                "TCC_LEASE_TTL ({:?}) must be at least twice TCC_CALL_TIMEOUT ({:?}), so that a lease outlives any call made under it",
                self.lease_ttl.0, self.call_timeout.0
            )));
        }
        if self.try_first_wait.0 * 4 > self.lease_ttl.0 {
            return Err(ConfigError::Invalid(format!(
                "TCC_TRY_FIRST_WAIT ({:?}) must be at most a quarter of TCC_LEASE_TTL ({:?}): a new job's driver holds its lease from the moment it is stored",
                self.try_first_wait.0, self.lease_ttl.0
            )));
        }
        if self.try_first_wait.0 * 2 > self.db_timeout.0 {
            return Err(ConfigError::Invalid(format!(
                "TCC_TRY_FIRST_WAIT ({:?}) must be at most half of TCC_DB_TIMEOUT ({:?}): the new job's write comes after the wait, within the same time limit",
                self.try_first_wait.0, self.db_timeout.0
            )));
        }
        if self.scan_interval.0 < Duration::from_millis(10) {
            return Err(ConfigError::Invalid(
                "TCC_SCAN_INTERVAL must be at least 10ms".into(),
            ));
        }
        if self.request_timeout.0 < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "TCC_REQUEST_TIMEOUT must be at least 1s".into(),
            ));
        }
        if self.header_read_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "TCC_HEADER_READ_TIMEOUT must be at least 100ms".into(),
            ));
        }
        if self.db_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "TCC_DB_TIMEOUT must be at least 100ms".into(),
            ));
        }
        if self.call_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "TCC_CALL_TIMEOUT must be at least 100ms".into(),
            ));
        }
        Ok(())
    }

    /// The instance id, generated when not set.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "tcc".into());
            format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
        })
    }
}

/// The settings whose value may hold a secret (a password in a URL, a key, a signing secret).
const SECRET_SETTINGS: [&str; 5] = [
    "DATABASE_URL",
    "TCC_SMTP_URL",
    "TCC_API_KEYS",
    "TCC_WEBHOOK_SECRET",
    "TCC_HEURISTIC_WEBHOOK",
];

/// A command-line error as it is printed, except that a bad value of a setting that may hold a
/// secret is not repeated (clap's own message shows the value): the error names the setting and
/// says what is wrong with it.
pub fn without_secrets(err: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    if !SECRET_SETTINGS.iter().any(|name| arg.contains(name)) {
        return err;
    }
    let why = std::error::Error::source(&err)
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!("invalid value for '{arg}' (not shown: it may hold a secret){why}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    /// No error about a setting repeats a secret it holds: a malformed URL with a password, a
    /// key written in the wrong order.
    #[test]
    fn errors_never_repeat_a_secret() {
        use clap::Parser;
        let secret = "Hunter2Hunter2Hunter2";
        let cases = [
            (
                "--database-url",
                format!("postgres://app:{secret}@db:notaport/tcc"),
            ),
            (
                "--database-url",
                format!("host=db password={secret} port=x"),
            ),
            ("--smtp-url", format!("smtp://mail:{secret}@:25")),
            ("--smtp-url", format!("imap://mail:{secret}@mail.example")),
            (
                "--smtp-url",
                format!("smtp://mail:{secret}@mail.example?tls=sometimes"),
            ),
            ("--smtp-url", format!("smtp://mail.example?tls={secret}")),
            (
                "--heuristic-webhook",
                format!("http://ops:{secret}@[x/hook"),
            ),
        ];
        for (flag, value) in cases {
            let err = Cli::try_parse_from(["tcc", flag, value.as_str()])
                .err()
                .map(without_secrets)
                .map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("{flag} {value} was taken"));
            assert!(!err.contains(secret), "{flag}: {err}");
            assert!(err.contains(&flag[2..]) || err.contains("URL"), "{err}");
        }
        for keys in [
            format!("ops:{secret}:admin"),
            format!("{secret}:admin:ops"),
            format!("ops:admin:another-secret-1234,{secret}:read:short"),
            format!("ops:admin:{secret},ops2:admin:{secret}"),
        ] {
            let cli = Cli::try_parse_from(["tcc", "--api-keys", keys.as_str()]);
            let err = cli.map(|c| c.config.validate());
            let text = format!("{err:?}");
            assert!(text.contains("TCC_API_KEYS"), "{keys}: {text}");
            assert!(!text.contains(secret), "{keys}: {text}");
        }
    }

    #[test]
    fn the_try_first_wait_fits_in_the_lease_and_the_database_time_limit() {
        use clap::Parser;
        let check = |args: &[&str]| {
            let mut all = vec!["tcc"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .expect("parsed")
                .config
                .validate()
                .map_err(|e| e.to_string())
        };
        assert!(check(&[]).is_ok(), "the defaults fit");
        assert!(check(&["--try-first-wait", "0"]).is_ok());
        let long = check(&["--try-first-wait", "10s"]).expect_err("past the lease's quarter");
        assert!(
            long.contains("TCC_TRY_FIRST_WAIT") && long.contains("TCC_LEASE_TTL"),
            "{long}"
        );
        let db = check(&["--try-first-wait", "3s", "--lease-ttl", "60s"])
            .expect_err("past half the database's time limit");
        assert!(
            db.contains("TCC_TRY_FIRST_WAIT") && db.contains("TCC_DB_TIMEOUT"),
            "{db}"
        );
        assert!(check(&["--try-first-wait", "2s", "--lease-ttl", "60s"]).is_ok());
    }

    #[test]
    fn spans() {
        assert_eq!("1.5".parse(), Ok(Span(Duration::from_millis(1500))));
        assert_eq!("500ms".parse(), Ok(Span(Duration::from_millis(500))));
        assert_eq!("30d".parse(), Ok(Span(Duration::from_secs(30 * 86_400))));
        assert!("ten".parse::<Span>().is_err());
        assert!("5y".parse::<Span>().is_err());
        assert!("-1".parse::<Span>().is_err());
    }

    #[test]
    fn listen_addresses() {
        let a = |s: &str| s.parse::<ListenAddr>().map(|a| a.to_string());
        assert_eq!(a("127.0.0.1:8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(a("localhost:9"), Ok("localhost:9".into()));
        assert_eq!(a(":8080"), Ok("0.0.0.0:8080".into()));
        assert_eq!(a("[::1]:80"), Ok("[::1]:80".into()));
        for bad in ["8080", "host:", "host:99999", "a b:1", "[zz]:1", "-x:1", ""] {
            assert!(a(bad).is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!("1MiB".parse(), Ok(Bytes(1024 * 1024)));
        assert_eq!("2048".parse(), Ok(Bytes(2048)));
        assert!("12".parse::<Bytes>().is_err());
        assert!("lots".parse::<Bytes>().is_err());
    }
}
