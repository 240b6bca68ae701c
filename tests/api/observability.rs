//! For SREs: the metrics of the contract as a scrape shows them, two instances agreeing on the
//! database gauges, and the dashboard and alert rules in `grafana/` checked against a real
//! Prometheus and Alertmanager scraping a live coordinator.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::operator::heuristic_job;
use crate::participant::{Op, Participant, Reply};

const OPS: [&str; 3] = ["try", "confirm", "cancel"];
const OUTCOMES: [&str; 6] = [
    "success",
    "retryable",
    "refused",
    "gone",
    "timeout",
    "error",
];

#[tokio::test]
async fn every_counter_of_the_contract_is_exported_at_zero_from_start_up() {
    let db = fresh_database().await;
    let p = start_process(&db, "metrics-zero");
    let http = reqwest::Client::new();
    p.wait_ready(&http).await;
    let s = scrape_until(&http, &p.addr, "showing the database gauges", |s| {
        s.value("tcc_jobs_active", &[("status", "pending")])
            .is_some()
    })
    .await;

    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(s.value(name, labels), Some(0.0), "{name}{labels:?}");
    };
    for source in ["jcl", "atomikos"] {
        zero("tcc_jobs_created_total", &[("source", source)]);
    }
    for status in ["completed", "failed", "canceled", "heuristic"] {
        zero("tcc_jobs_finished_total", &[("status", status)]);
    }
    zero("tcc_heuristic_jobs_total", &[]);
    zero("tcc_engine_lease_lost_total", &[]);
    for channel in ["callback", "webhook", "email"] {
        for outcome in ["delivered", "retry", "failed"] {
            zero(
                "tcc_notifications_total",
                &[("channel", channel), ("outcome", outcome)],
            );
        }
    }
    for kind in ["panic", "illegal", "store"] {
        zero("tcc_engine_driver_failures_total", &[("kind", kind)]);
    }
    for reason in ["overloaded", "timeout"] {
        zero("tcc_api_rejected_total", &[("reason", reason)]);
    }
    // The database gauges, for every non-terminal status, and the unresolved heuristics.
    for status in ["pending", "trying", "reserved", "confirming", "canceling"] {
        zero("tcc_jobs_active", &[("status", status)]);
        zero("tcc_oldest_active_job_age_seconds", &[("status", status)]);
    }
    zero("tcc_heuristic_unresolved", &[]);
    assert_eq!(s.value("tcc_ready", &[]), Some(1.0));
    assert_eq!(
        s.value("tcc_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert!(
        s.value("tcc_db_pool_connections", &[("state", "idle")])
            .is_some()
    );
    assert!(
        s.value("tcc_db_pool_connections", &[("state", "in_use")])
            .is_some()
    );
    // Types as the contract says.
    for (family, kind) in [
        ("tcc_jobs_created_total", "counter"),
        ("tcc_jobs_finished_total", "counter"),
        ("tcc_jobs_active", "gauge"),
        ("tcc_heuristic_jobs_total", "counter"),
        ("tcc_heuristic_unresolved", "gauge"),
        ("tcc_notifications_total", "counter"),
        ("tcc_http_request_duration_seconds", "histogram"),
        ("tcc_db_pool_connections", "gauge"),
    ] {
        assert_eq!(s.kind(family), Some(kind), "{family}");
    }
    // Process metrics.
    assert!(
        s.value("process_resident_memory_bytes", &[])
            .is_some_and(|v| v > 0.0)
    );
    assert!(s.value("process_open_fds", &[]).is_some_and(|v| v > 0.0));
    assert!(s.value("process_cpu_seconds_total", &[]).is_some());
}

#[tokio::test]
async fn participant_calls_are_counted_by_participant_up_to_the_cap() {
    let db = fresh_database().await;
    let coordinator = start_process_with(
        &db,
        "metrics-participants",
        &[("TCC_METRICS_MAX_PARTICIPANTS", "1")],
    );
    let http = reqwest::Client::new();
    coordinator.wait_ready(&http).await;
    let first = Participant::start().await;
    let second = Participant::start().await;
    let label = |p: &Participant| {
        p.url("x")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (a, b) = (label(&first), label(&second));

    // One job to the first participant completes; one whose Try it refuses fails.
    let done = submit_to(&http, &coordinator.addr, &job_of(&[("t", first.url("ok"))])).await;
    first.set_default(Op::Try, "no", Reply::Status(409));
    let failed = submit_to(&http, &coordinator.addr, &job_of(&[("t", first.url("no"))])).await;
    // Then one to the second participant: past the cap of 1, it is `other`.
    for (id, status) in [(&done, "completed"), (&failed, "failed")] {
        wait_for_status(&http, &coordinator.addr, id, status).await;
    }
    let later = submit_to(
        &http,
        &coordinator.addr,
        &job_of(&[("t", second.url("ok"))]),
    )
    .await;
    wait_for_status(&http, &coordinator.addr, &later, "completed").await;

    let s = scrape(&http, &coordinator.addr).await;
    let calls = |participant: &str, op: &str, outcome: &str| {
        s.value(
            "tcc_participant_calls_total",
            &[
                ("op", op),
                ("outcome", outcome),
                ("participant", participant),
            ],
        )
    };
    assert_eq!(calls(&a, "try", "success"), Some(1.0));
    assert_eq!(calls(&a, "try", "refused"), Some(1.0));
    assert_eq!(calls(&a, "confirm", "success"), Some(1.0));
    assert_eq!(calls("other", "try", "success"), Some(1.0));
    assert_eq!(calls("other", "confirm", "success"), Some(1.0));
    // A participant's series exist at 0 for every op and outcome from its first call on.
    for op in OPS {
        for outcome in OUTCOMES {
            assert!(calls(&a, op, outcome).is_some(), "{a} {op} {outcome}");
        }
    }
    assert_eq!(calls(&a, "cancel", "gone"), Some(0.0));
    assert!(
        s.series("tcc_participant_calls_total")
            .all(|x| x.labels.get("participant") != Some(&b)),
        "the second participant is past the cap"
    );
    // Durations are Prometheus histograms with buckets, by op and participant.
    assert_eq!(
        s.value(
            "tcc_participant_call_duration_seconds_count",
            &[("op", "try"), ("participant", &a)]
        ),
        Some(2.0)
    );
    let buckets = s
        .series("tcc_participant_call_duration_seconds_bucket")
        .filter(|x| {
            x.labels.get("participant") == Some(&a)
                && x.labels.get("op").map(String::as_str) == Some("try")
        })
        .count();
    assert!(buckets > 10, "{buckets} buckets");
    assert_eq!(
        s.value("tcc_jobs_finished_total", &[("status", "completed")]),
        Some(2.0)
    );
    assert_eq!(
        s.value("tcc_jobs_finished_total", &[("status", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        s.value("tcc_jobs_created_total", &[("source", "jcl")]),
        Some(3.0)
    );
    assert_eq!(
        s.value("tcc_job_duration_seconds_count", &[("status", "completed")]),
        Some(2.0)
    );
    // HTTP metrics by route template, never by the job's id.
    assert_eq!(
        s.value(
            "tcc_http_requests_total",
            &[("method", "POST"), ("route", "/jobs"), ("status", "202")]
        ),
        Some(3.0)
    );
    assert!(
        s.value(
            "tcc_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/jobs/{job_id}"),
                ("status", "200")
            ]
        )
        .is_some_and(|n| n >= 3.0)
    );
    assert!(!s.text.contains(&done), "no job id in any label");
}

#[tokio::test]
async fn instances_agree_on_the_database_gauges_and_so_does_a_restarted_one() {
    let db = fresh_database().await;
    let one = start_process(&db, "gauges-1");
    let mut two = start_process(&db, "gauges-2");
    let http = reqwest::Client::new();
    one.wait_ready(&http).await;
    two.wait_ready(&http).await;
    let p = Participant::start().await;
    // Three jobs that wait for their client's confirm, submitted to either instance.
    let mut ids = Vec::new();
    for (i, addr) in [&one.addr, &two.addr, &one.addr].into_iter().enumerate() {
        let mut job = job_of(&[("t", p.url(&format!("r{i}")))]);
        job["autoConfirm"] = json!(false);
        let id = submit_to(&http, addr, &job).await;
        wait_for_status(&http, addr, &id, "reserved").await;
        ids.push(id);
    }
    let reserved = |n: f64| {
        move |s: &Scrape| {
            s.value("tcc_jobs_active", &[("status", "reserved")]) == Some(n)
                && s.value(
                    "tcc_oldest_active_job_age_seconds",
                    &[("status", "reserved")],
                )
                .is_some_and(|age| age > 0.0)
                && s.value("tcc_jobs_active", &[("status", "confirming")]) == Some(0.0)
        }
    };
    for addr in [&one.addr, &two.addr] {
        scrape_until(&http, addr, "3 reserved jobs", reserved(3.0)).await;
    }
    // An instance started afterwards reads the same from the database.
    two.kill();
    let three = start_process(&db, "gauges-3");
    three.wait_ready(&http).await;
    scrape_until(&http, &three.addr, "3 reserved jobs", reserved(3.0)).await;

    // One confirmed: both running instances say 2.
    let r = http
        .post(format!("{}/jobs/{}/confirm", one.addr, ids[0]))
        .send()
        .await
        .expect("confirm");
    assert!(r.status().is_success(), "{}", r.status());
    wait_for_status(&http, &one.addr, &ids[0], "completed").await;
    for addr in [&one.addr, &three.addr] {
        scrape_until(&http, addr, "2 reserved jobs", reserved(2.0)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// grafana/: the dashboard, the Grafana rules and the Prometheus rules against real tools.

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a tool");
    let text = printed(&out);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_every_alert_rule() {
    let Some(promtool) = tool(&["promtool"], "Debian's prometheus") else {
        return;
    };
    let dir = repo("grafana/prometheus");
    let checked = run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(checked.contains("SUCCESS"), "{checked}");
    run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
    // Every alert of the rule file has a unit test, and every one says what to do.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).expect("alerts.test.yml");
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).expect("docs/runbook.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
        assert!(
            rules.contains(&format!(
                "runbook_url: docs/runbook.md#{}",
                alert.to_lowercase()
            )),
            "{alert} has no runbook_url"
        );
        assert!(
            runbook.contains(&format!("## {alert}")),
            "docs/runbook.md has no section for {alert}"
        );
    }
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo("grafana/dashboards/tcc-coordinator.json"))
        .expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn grafana_rules() -> Value {
    let text = std::fs::read_to_string(repo("grafana/provisioning/alerting/tcc-alerts.json"))
        .expect("the Grafana alert rules");
    serde_json::from_str(&text).expect("the Grafana alert rules are JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

/// Every PromQL expression of the dashboard and of the Grafana rules, with where it is from.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dash = dashboard();
    for p in panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((format!("panel {:?}", p["title"]), e.to_string()));
            }
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    let rules = grafana_rules();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            for d in r["data"].as_array().expect("data") {
                if d["datasourceUid"] != "__expr__"
                    && let Some(e) = d["model"]["expr"].as_str()
                {
                    out.push((format!("Grafana rule {}", r["title"]), e.to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a datasource variable"
    );
    assert!(
        vars.iter().any(|v| v["name"] == "instance"),
        "an instance variable"
    );
    let mut ids = HashSet::new();
    let all = panels(&dash);
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        let id = p["id"].as_i64().expect("a panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(
            [
                "row",
                "timeseries",
                "stat",
                "gauge",
                "bargauge",
                "table",
                "text"
            ]
            .contains(&kind),
            "{title}: panel type {kind:?} (graph and other deprecated types are not used)"
        );
        if kind == "row" {
            continue;
        }
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 10),
            "{title}: no description"
        );
        assert!(
            p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "{title}: no unit"
        );
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: datasource"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{title}: target datasource"
            );
            let expr = t["expr"].as_str().expect("expr");
            // Rates over the rate interval (or the dashboard's range), never a fixed window.
            for (i, _) in expr
                .match_indices("rate(")
                .chain(expr.match_indices("increase("))
            {
                let window = expr[i..]
                    .split_once('[')
                    .map(|(_, w)| w)
                    .unwrap_or_default();
                assert!(
                    window.starts_with("$__rate_interval]") || window.starts_with("$__range]"),
                    "{title}: {expr}"
                );
            }
        }
    }
    // The heuristic outcomes are at the top.
    let first = all.iter().find(|p| p["type"] != "row").expect("a panel");
    assert!(
        first["targets"][0]["expr"]
            .as_str()
            .is_some_and(|e| e.contains("tcc_heuristic_unresolved")),
        "{first}"
    );
    assert_eq!(first["gridPos"]["y"], 1);
    // What the dashboard is asked to show is there.
    let exprs: Vec<String> = expressions().into_iter().map(|(_, e)| e).collect();
    for needle in [
        "tcc_jobs_finished_total",
        "tcc_jobs_active",
        "tcc_heuristic_jobs_total",
        "tcc_participant_call_duration_seconds_bucket",
        "histogram_quantile(0.99",
        "tcc_oldest_active_job_age_seconds",
        "tcc_notifications_total",
        "tcc_http_requests_total",
        "tcc_http_request_duration_seconds_bucket",
        "tcc_db_pool_connections",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "no panel shows {needle}"
        );
    }
}

/// Dashboard variables as Grafana would fill them in, for Prometheus's query API.
fn as_grafana_would(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$__interval", "15s")
        .replace("$instance", ".*")
}

/// Metric names a PromQL expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("tcc_") || expr[i..].starts_with("process_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// A webhook receiver for Alertmanager: keeps every notification's JSON.
#[derive(Clone, Default)]
struct AlertInbox(Arc<Mutex<Vec<Value>>>);

impl AlertInbox {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = Router::new()
            .route(
                "/alerts",
                post(
                    |State(inbox): State<AlertInbox>, body: axum::Json<Value>| async move {
                        inbox
                            .0
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(body.0);
                    },
                ),
            )
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/alerts")
    }

    /// The alerts named `name` that arrived with `status` (firing or resolved).
    fn alerts(&self, name: &str, status: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["labels"]["alertname"] == name && a["status"] == status)
            .collect()
    }
}

fn query_url(prom: &str, expr: &str) -> String {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("query", expr)
        .finish();
    format!("{prom}/api/v1/query?{q}")
}

async fn prometheus_query(http: &reqwest::Client, prom: &str, expr: &str) -> Value {
    http.get(query_url(prom, expr))
        .send()
        .await
        .expect("query Prometheus")
        .json()
        .await
        .expect("Prometheus answers JSON")
}

#[tokio::test]
async fn prometheus_evaluates_every_panel_and_alertmanager_calls_for_help_on_a_heuristic() {
    let (Some(prometheus), Some(alertmanager)) = (
        tool(&["prometheus"], "Debian's prometheus"),
        tool(
            &["prometheus-alertmanager", "alertmanager"],
            "Debian's prometheus-alertmanager",
        ),
    ) else {
        return;
    };
    let http = reqwest::Client::new();
    let db = fresh_database().await;
    let coordinator = start_process(&db, "sre");
    coordinator.wait_ready(&http).await;
    let target = coordinator.addr.trim_start_matches("http://").to_string();

    // Alertmanager, routing everything to the test's receiver at once.
    let inbox = AlertInbox::default();
    let hook = inbox.start().await;
    let work = std::env::temp_dir().join(format!("tcc-sre-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work).expect("work dir");
    std::fs::write(
        work.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: test\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: test\n    webhook_configs:\n      - url: {hook}\n        send_resolved: true\n"
        ),
    )
    .expect("alertmanager.yml");
    let am_port = free_port();
    let _am = Daemon(
        Command::new(&alertmanager)
            .arg(format!(
                "--config.file={}",
                work.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", work.join("am").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Alertmanager"),
    );

    // Prometheus, scraping the coordinator every second with the project's rule file.
    std::fs::copy(
        repo("grafana/prometheus/alerts.yml"),
        work.join("alerts.yml"),
    )
    .expect("copy the rules");
    std::fs::write(
        work.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [alerts.yml]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: tcc-coordinator\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus.yml");
    let prom_port = free_port();
    let _prom = Daemon(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                work.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--rules.alert.resend-delay=1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Prometheus"),
    );
    let prom = format!("http://127.0.0.1:{prom_port}");
    let scraped = eventually(|| async {
        let r = match http
            .get(query_url(&prom, "up{job=\"tcc-coordinator\"} == 1"))
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => return false,
        };
        let v: Value = r.json().await.unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    assert!(scraped, "Prometheus never scraped the coordinator");

    // Some traffic, so that the histograms and participant series have data.
    let p = Participant::start().await;
    let id = submit_to(&http, &coordinator.addr, &job_of(&[("t", p.url("ok"))])).await;
    wait_for_status(&http, &coordinator.addr, &id, "completed").await;

    // Every expression of the dashboard and of the Grafana rules is valid PromQL, and every
    // metric it reads is one the coordinator exports.
    let exported = scrape(&http, &coordinator.addr).await;
    let names = exported.names();
    for (from, expr) in expressions() {
        let query = as_grafana_would(&expr);
        let query = query
            .strip_prefix("label_values(")
            .map(|rest| rest.rsplit_once(',').map_or(rest, |(m, _)| m).to_string())
            .unwrap_or(query.clone());
        let answer = prometheus_query(&http, &prom, &query).await;
        assert_eq!(answer["status"], "success", "{from}: {query}: {answer}");
        for name in metric_names(&expr) {
            assert!(
                names.contains(name.as_str()),
                "{from}: {name} is not exported by the coordinator"
            );
        }
    }
    // And the Prometheus rules as Prometheus loaded them: every one evaluates without error.
    let healthy = eventually(|| async {
        let v: Value = match http.get(format!("{prom}/api/v1/rules")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules.len() >= 8 && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    assert!(healthy, "the rules never all evaluated cleanly");
    assert!(
        inbox.alerts("TccHeuristicOutcome", "firing").is_empty(),
        "no heuristic yet, no alert"
    );

    // A heuristic outcome: the alert reaches the receiver with its runbook link.
    let heuristic = heuristic_job(&coordinator.addr, &http, &p, "sre").await;
    wait_for_status(&http, &coordinator.addr, &heuristic, "heuristic").await;
    let fired =
        eventually(|| async { !inbox.alerts("TccHeuristicOutcome", "firing").is_empty() }).await;
    assert!(fired, "the heuristic alert never reached the receiver");
    let alert = inbox.alerts("TccHeuristicOutcome", "firing")[0].clone();
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(
        alert["annotations"]["runbook_url"], "docs/runbook.md#tccheuristicoutcome",
        "{alert}"
    );
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("1 heuristic job")),
        "{alert}"
    );

    // Resolved by an operator: the alert resolves.
    let r = http
        .post(format!("{}/jobs/{heuristic}/resolve", coordinator.addr))
        .json(&json!({"note": "refunded by hand"}))
        .send()
        .await
        .expect("resolve");
    assert_eq!(r.status(), 200);
    let resolved =
        eventually(|| async { !inbox.alerts("TccHeuristicOutcome", "resolved").is_empty() }).await;
    assert!(resolved, "the heuristic alert never resolved");
    let _ = std::fs::remove_dir_all(&work);
}
