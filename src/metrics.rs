//! Every metric name of the contract (SPEC §9), described once. Labels stay low-cardinality:
//! never a job or task id.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// `tcc_jobs_created_total{source}`: JCL `POST /jobs`, or the Atomikos-compatible
/// `PUT /coordinator/*`.
pub const JOB_SOURCES: [&str; 2] = ["jcl", "atomikos"];
/// `tcc_jobs_finished_total{status}`: the terminal statuses.
pub const FINISHED_STATUSES: [&str; 4] = ["completed", "failed", "canceled", "heuristic"];
/// `tcc_notifications_total{channel, outcome}`.
pub const NOTIFICATION_CHANNELS: [&str; 3] = ["callback", "webhook", "email"];
pub const NOTIFICATION_OUTCOMES: [&str; 3] = ["delivered", "retry", "failed"];
/// `tcc_engine_driver_failures_total{kind}`: the values of `kind`.
pub const DRIVER_FAILURE_KINDS: [&str; 3] = ["panic", "illegal", "store"];
/// `tcc_api_rejected_total{reason}`: a request refused with 503 because the accept queue or the
/// in-flight limit was full (`overloaded`), or answered 503 because it ran out of time
/// (`timeout`).
pub const REJECTED_REASONS: [&str; 2] = ["overloaded", "timeout"];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
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
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Some(handle)
        })
        .clone()
}

fn describe() {
    describe_counter!(
        JOBS_CREATED,
        "Jobs accepted, by entry point (jcl, atomikos)."
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
        "Calls to participants, by operation and outcome."
    );
    describe_histogram!(
        PARTICIPANT_CALL_DURATION,
        Unit::Seconds,
        "Duration of participant calls."
    );
    describe_counter!(HEURISTIC_JOBS, "Jobs that ended heuristic.");
    describe_gauge!(
        HEURISTIC_UNRESOLVED,
        "Heuristic jobs that nobody has resolved yet."
    );
    describe_gauge!(
        OLDEST_ACTIVE_JOB_AGE,
        Unit::Seconds,
        "Age of the oldest job in each non-terminal status."
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
}
