//! Every metric name of the contract (README, "For SREs"), described once. Labels stay low-cardinality:
//! never a job or task id.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::Op;
use crate::participant::CallOutcome;

pub const JOBS_CREATED: &str = "tcc_jobs_created_total";
pub const JOBS_FINISHED: &str = "tcc_jobs_finished_total";
pub const JOBS_ACTIVE: &str = "tcc_jobs_active";
pub const JOB_DURATION: &str = "tcc_job_duration_seconds";
pub const PARTICIPANT_CALLS: &str = "tcc_participant_calls_total";
pub const PARTICIPANT_CALL_DURATION: &str = "tcc_participant_call_duration_seconds";
pub const HEURISTIC_JOBS: &str = "tcc_heuristic_jobs_total";
pub const HEURISTIC_UNRESOLVED: &str = "tcc_heuristic_unresolved";
pub const OLDEST_ACTIVE_JOB_AGE: &str = "tcc_oldest_active_job_age_seconds";
pub const NOTIFICATIONS: &str = "tcc_notifications_total";
pub const HTTP_REQUESTS: &str = "tcc_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "tcc_http_request_duration_seconds";
pub const ENGINE_LEASE_LOST: &str = "tcc_engine_lease_lost_total";
pub const DB_POOL_CONNECTIONS: &str = "tcc_db_pool_connections";
pub const BUILD_INFO: &str = "tcc_build_info";
pub const ENGINE_DRIVER_FAILURES: &str = "tcc_engine_driver_failures_total";
pub const API_REJECTED: &str = "tcc_api_rejected_total";
/// Not in the contract's table: 1 while `/health/ready` would answer 200, so that an alert can
/// tell "up but not ready" from "down".
pub const READY: &str = "tcc_ready";

/// `tcc_jobs_created_total{source}`: JCL `POST /jobs`, or the Atomikos-compatible
/// `PUT /coordinator/*`.
pub const JOB_SOURCES: [&str; 3] = ["jcl", "atomikos", "dtm"];
/// `tcc_jobs_finished_total{status}`: the terminal statuses.
pub const FINISHED_STATUSES: [&str; 4] = ["completed", "failed", "canceled", "heuristic"];
/// `tcc_notifications_total{channel, outcome}`.
pub const NOTIFICATION_CHANNELS: [&str; 3] = ["callback", "webhook", "email"];
pub const NOTIFICATION_OUTCOMES: [&str; 3] = ["delivered", "retry", "failed"];
/// `tcc_engine_driver_failures_total{kind}`: the values of `kind`.
pub const DRIVER_FAILURE_KINDS: [&str; 3] = ["panic", "illegal", "store"];
/// `tcc_api_rejected_total{reason}`: a request refused with 503 because the connections, the
/// in-flight limit or the waiting requests' budget was full (`overloaded`), or answered 503 because it ran out of time
/// (`timeout`).
pub const REJECTED_REASONS: [&str; 2] = ["overloaded", "timeout"];

/// `tcc_participant_calls_total{op}` and `{outcome}`: every value, in index order.
const OPS: [Op; 3] = [Op::Try, Op::Confirm, Op::Cancel];
const OUTCOMES: [CallOutcome; 6] = [
    CallOutcome::Success,
    CallOutcome::Retryable,
    CallOutcome::Refused,
    CallOutcome::Gone,
    CallOutcome::Timeout,
    CallOutcome::Error,
];

/// Histogram buckets, chosen for each metric's range (seconds).
const HTTP_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const PARTICIPANT_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// A job lasts from milliseconds (auto-confirmed) to hours (a confirm retried until its link
/// expires, a reservation waiting for its client).
const JOB_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    14_400.0, 86_400.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.into()), &HTTP_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full(PARTICIPANT_CALL_DURATION.into()),
                    &PARTICIPANT_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(Matcher::Full(JOB_DURATION.into()), &JOB_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            process().describe();
            // Counters exist from start-up, at 0, for every label value, so that increase()
            // and alerts work before the first event.
            for source in JOB_SOURCES {
                metrics::counter!(JOBS_CREATED, "source" => source).absolute(0);
            }
            for status in FINISHED_STATUSES {
                metrics::counter!(JOBS_FINISHED, "status" => status).absolute(0);
            }
            metrics::counter!(HEURISTIC_JOBS).absolute(0);
            metrics::counter!(ENGINE_LEASE_LOST).absolute(0);
            for channel in NOTIFICATION_CHANNELS {
                for outcome in NOTIFICATION_OUTCOMES {
                    metrics::counter!(NOTIFICATIONS, "channel" => channel, "outcome" => outcome)
                        .absolute(0);
                }
            }
            for kind in DRIVER_FAILURE_KINDS {
                metrics::counter!(ENGINE_DRIVER_FAILURES, "kind" => kind).absolute(0);
            }
            for reason in REJECTED_REASONS {
                metrics::counter!(API_REJECTED, "reason" => reason).absolute(0);
            }
            metrics::gauge!(HEURISTIC_UNRESOLVED).set(0.0);
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .clone()
}

/// The exposition text: the process metrics are read now, then everything is rendered.
pub fn render(handle: &PrometheusHandle) -> String {
    process().collect();
    handle.render()
}

/// CPU, memory, open files, threads (`process_*`, as Prometheus's own clients name them).
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Count and time one participant call, under its target's `participant` label.
pub fn participant_call(url: Option<&str>, op: Op, outcome: CallOutcome, took: Duration) {
    let series = participants().series(url);
    let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(5);
    let i = OPS.iter().position(|x| *x == op).unwrap_or(0);
    series.calls[i][o].increment(1);
    series.durations[i].record(took.as_secs_f64());
}

/// How many distinct `participant` label values there may be (`TCC_METRICS_MAX_PARTICIPANTS`);
/// the targets after those are counted as `other`.
pub fn set_max_participants(max: usize) {
    participants().max.store(max, Ordering::Relaxed);
}

/// The label of calls to the targets past `TCC_METRICS_MAX_PARTICIPANTS`, and of calls with no
/// target (a task without a link).
pub const OTHER_PARTICIPANT: &str = "other";

/// The participant series: one per target host:port, created with every `op` and `outcome`
/// at 0 (so a failure ratio has a denominator from the first call), their handles kept so that
/// a call costs a map lookup and two atomic adds.
struct Participants {
    max: AtomicUsize,
    seen: RwLock<HashMap<String, Arc<ParticipantSeries>>>,
    other: OnceLock<Arc<ParticipantSeries>>,
}

struct ParticipantSeries {
    calls: [[Counter; 6]; 3],
    durations: [Histogram; 3],
}

impl ParticipantSeries {
    fn new(label: &str) -> Self {
        let calls = OPS.map(|op| {
            OUTCOMES.map(|outcome| {
                let c = metrics::counter!(PARTICIPANT_CALLS, "op" => op.as_str(),
                    "outcome" => outcome.as_str(), "participant" => label.to_string());
                c.absolute(0);
                c
            })
        });
        let durations = OPS.map(|op| {
            metrics::histogram!(PARTICIPANT_CALL_DURATION, "op" => op.as_str(),
                "participant" => label.to_string())
        });
        ParticipantSeries { calls, durations }
    }
}

fn participants() -> &'static Participants {
    static PARTICIPANTS: OnceLock<Participants> = OnceLock::new();
    PARTICIPANTS.get_or_init(|| Participants {
        max: AtomicUsize::new(100),
        seen: RwLock::new(HashMap::new()),
        other: OnceLock::new(),
    })
}

impl Participants {
    fn series(&self, url: Option<&str>) -> Arc<ParticipantSeries> {
        let Some(label) = url.and_then(host_port) else {
            return self.other();
        };
        if let Some(s) = self
            .seen
            .read()
            .ok()
            .and_then(|m| m.get(label.as_ref()).cloned())
        {
            return s;
        }
        let Ok(mut seen) = self.seen.write() else {
            return self.other();
        };
        if let Some(s) = seen.get(label.as_ref()) {
            return s.clone();
        }
        if seen.len() >= self.max.load(Ordering::Relaxed) {
            drop(seen);
            return self.other();
        }
        let s = Arc::new(ParticipantSeries::new(&label));
        seen.insert(label.into_owned(), s.clone());
        s
    }

    fn other(&self) -> Arc<ParticipantSeries> {
        self.other
            .get_or_init(|| Arc::new(ParticipantSeries::new(OTHER_PARTICIPANT)))
            .clone()
    }
}

/// A URL's `host:port`, lower case, with the scheme's default port when it names none
/// (`http://Shop.Example/x` → `shop.example:80`); `None` when it is not an http(s) URL.
pub fn host_port(url: &str) -> Option<Cow<'_, str>> {
    let (scheme, rest) = url.split_once("://")?;
    let default = if scheme.eq_ignore_ascii_case("http") {
        "80"
    } else if scheme.eq_ignore_ascii_case("https") {
        "443"
    } else {
        return None;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return None;
    }
    // An IPv6 literal's colons are inside its brackets; a port follows the closing one.
    let has_port = match host.rfind(']') {
        Some(i) => host[i..].contains(':'),
        None => host.contains(':'),
    };
    let upper = host.bytes().any(|b| b.is_ascii_uppercase());
    Some(match (has_port, upper) {
        (true, false) => Cow::Borrowed(host),
        (true, true) => Cow::Owned(host.to_ascii_lowercase()),
        (false, _) => Cow::Owned(format!("{}:{default}", host.to_ascii_lowercase())),
    })
}

fn describe() {
    describe_counter!(
        JOBS_CREATED,
        "Jobs accepted, by entry point (jcl, atomikos, dtm)."
    );
    describe_counter!(JOBS_FINISHED, "Jobs that reached a terminal status.");
    describe_gauge!(JOBS_ACTIVE, "Jobs in each non-terminal status.");
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Time from acceptance to the terminal status."
    );
    describe_counter!(
        PARTICIPANT_CALLS,
        "Calls to participants, by operation, outcome and participant (host:port)."
    );
    describe_histogram!(
        PARTICIPANT_CALL_DURATION,
        Unit::Seconds,
        "Duration of participant calls, by operation and participant (host:port)."
    );
    describe_counter!(HEURISTIC_JOBS, "Jobs that ended heuristic.");
    describe_gauge!(
        HEURISTIC_UNRESOLVED,
        "Heuristic jobs that nobody has resolved yet."
    );
    describe_gauge!(
        OLDEST_ACTIVE_JOB_AGE,
        Unit::Seconds,
        "Age of the oldest job in each non-terminal status: since creation while pending, trying or reserved; since the decision while confirming or canceling."
    );
    describe_counter!(NOTIFICATIONS, "Callback, webhook and email deliveries.");
    describe_counter!(HTTP_REQUESTS, "HTTP requests served.");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP requests served."
    );
    describe_counter!(
        ENGINE_LEASE_LOST,
        "Times this instance found a job's lease taken by another instance."
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Database pool connections by state.");
    describe_counter!(
        ENGINE_DRIVER_FAILURES,
        "Job drivers that ended in a panic, an illegal transition or a store error; the job is retried."
    );
    describe_counter!(
        API_REJECTED,
        "Requests answered 503: overloaded (queue or in-flight limit full) or timeout."
    );
    describe_gauge!(BUILD_INFO, "Build information.");
    describe_gauge!(
        READY,
        "1 while this instance can accept and drive jobs (/health/ready answers 200), else 0."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobStatus;

    #[test]
    fn the_finished_statuses_are_exactly_the_terminal_ones() {
        let terminal: Vec<&str> = JobStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(terminal, FINISHED_STATUSES);
    }

    #[test]
    fn the_participant_label_is_the_targets_host_and_port() {
        let cases = [
            ("http://127.0.0.1:9000/try", Some("127.0.0.1:9000")),
            ("http://Shop.Example/reserve?x=1", Some("shop.example:80")),
            ("https://pay.example", Some("pay.example:443")),
            (
                "https://user:pw@pay.example:8443/x#f",
                Some("pay.example:8443"),
            ),
            ("http://[::1]:8080/x", Some("[::1]:8080")),
            ("http://[fe80::1]/x", Some("[fe80::1]:80")),
            ("HTTP://A.example:81", Some("a.example:81")),
            ("ftp://files.example/x", None),
            ("http:///nohost", None),
            ("not a url", None),
        ];
        for (url, want) in cases {
            assert_eq!(host_port(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn the_outcomes_are_the_contracts() {
        assert_eq!(
            OUTCOMES.map(|o| o.as_str()),
            [
                "success",
                "retryable",
                "refused",
                "gone",
                "timeout",
                "error"
            ]
        );
    }
}
