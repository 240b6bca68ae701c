//! The participant checker (`check-participant`) against real participants: one that keeps
//! every rule, and one per rule that breaks exactly that rule. Each must be reported so, by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tcc_coordinator::check::{CheckOptions, Outcome, RULES, Report, check, rule};

use crate::helpers::{Daemon, eventually, free_port, header_in, poll_within, printed};
use crate::rules::{ResState, Settle, past_deadline, settle};

/// A reservation lasting this long lets the expiry rule run quickly, and is still far longer
/// than the other rules take to settle it on a loaded machine.
const SHORT_HOLD: Duration = Duration::from_secs(5);
/// A reservation lasting this long is never waited for (with `MAX_WAIT`): the expiry rule is
/// skipped.
const LONG_HOLD: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The one thing a participant does wrong (or nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// Every Try reserves anew: no deduplication at all.
    NoDedup,
    /// A repeat replays the link but with a new `expires`.
    RefreshesExpiry,
    /// The same ids with another body replay the first answer.
    AcceptsOtherBody,
    /// Deduplicates only what is already stored: Trys that arrive together each reserve.
    RacesOnRepeats,
    /// A second confirm answers 404.
    ConfirmRepeat404,
    /// A second confirm answers 500.
    ConfirmRepeat500,
    /// A cancel after a confirm answers 204.
    CancelAfterConfirm204,
    /// A confirm after a cancel answers 204.
    ConfirmAfterCancel204,
    /// A link it never gave answers 200.
    UnknownLink200,
    /// An expired reservation is still confirmed.
    ConfirmAfterExpiry,
    /// `tcc-deadline` is not read: a late Try reserves.
    IgnoresDeadline,
    /// A late Try answers 409, and that answer is stored and replayed.
    StoresLateTry,
    /// A Try answers 201 without a link.
    NoLink,
}

struct Held {
    expires: DateTime<Utc>,
    state: ResState,
}

/// A Try's answer as kept for its repeats: the body it came with, and what was answered.
struct Answered {
    body: String,
    status: StatusCode,
    answer: Value,
}

#[derive(Default)]
struct Books {
    reservations: HashMap<String, Held>,
    answered: HashMap<(String, String), Answered>,
    /// Trys being handled, by ids (`RacesOnRepeats` only).
    pending: HashMap<(String, String), usize>,
    next: u64,
}

/// An in-memory participant, correct unless given a flaw.
#[derive(Clone)]
struct Service {
    flaw: Flaw,
    hold: Duration,
    base: String,
    books: Arc<Mutex<Books>>,
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expires(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(self.hold).unwrap_or_default()
    }

    /// Holds a new reservation; its answer.
    fn reserve(&self, books: &mut Books) -> (StatusCode, Value) {
        books.next += 1;
        let id = format!("h{}", books.next);
        let expires = self.expires();
        books.reservations.insert(
            id.clone(),
            Held {
                expires,
                state: ResState::Reserved,
            },
        );
        if self.flaw == Flaw::NoLink {
            return (StatusCode::CREATED, json!({}));
        }
        let answer = json!({"participantLink": {
            "uri": format!("{}/holds/{id}", self.base),
            "expires": expires.to_rfc3339_opts(SecondsFormat::Millis, true),
        }});
        (StatusCode::CREATED, answer)
    }

    /// The stored answer for a repeat, or `None` when these ids are new.
    fn replay(&self, books: &Books, key: &(String, String), body: &str) -> Option<Response> {
        let a = books.answered.get(key)?;
        if a.body != body && self.flaw != Flaw::AcceptsOtherBody {
            return Some(StatusCode::UNPROCESSABLE_ENTITY.into_response());
        }
        let mut answer = a.answer.clone();
        if self.flaw == Flaw::RefreshesExpiry {
            // Later than the first answer's, always (a repeat in the same millisecond as the
            // first Try would otherwise get the same time).
            let first = answer["participantLink"]["expires"]
                .as_str()
                .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
                .map_or_else(|| self.expires(), |e| e.with_timezone(&Utc));
            answer["participantLink"]["expires"] = json!(
                (first + chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        Some((a.status, axum::Json(answer)).into_response())
    }

    /// The racing flaw: look up, wait for a second Try with the same ids (at most 2 s), and
    /// only then reserve and store.
    async fn racy_try(&self, key: (String, String), body: String) -> Response {
        {
            let mut b = self.lock();
            if let Some(r) = self.replay(&b, &key, &body) {
                return r;
            }
            *b.pending.entry(key.clone()).or_default() += 1;
        }
        let both = || {
            let pending = self.lock().pending.get(&key).copied().unwrap_or(0);
            async move { (pending >= 2).then_some(()) }
        };
        poll_within(Duration::from_secs(2), Duration::from_millis(5), both).await;
        let mut b = self.lock();
        let (status, answer) = self.reserve(&mut b);
        b.answered.insert(
            key.clone(),
            Answered {
                body,
                status,
                answer: answer.clone(),
            },
        );
        if let Some(n) = b.pending.get_mut(&key) {
            *n = n.saturating_sub(1);
        }
        (status, axum::Json(answer)).into_response()
    }
}

async fn try_handler(State(s): State<Service>, headers: HeaderMap, body: String) -> Response {
    let (Some(correlation), Some(request)) = (
        header_in(&headers, "correlation-id"),
        header_in(&headers, "request-id"),
    ) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let key = (correlation, request);
    let late = past_deadline(&headers, Utc::now());
    if late && s.flaw != Flaw::IgnoresDeadline {
        if s.flaw == Flaw::StoresLateTry {
            s.lock().answered.insert(
                key,
                Answered {
                    body,
                    status: StatusCode::CONFLICT,
                    answer: json!({"error": "too late"}),
                },
            );
        }
        return StatusCode::CONFLICT.into_response();
    }
    if s.flaw == Flaw::RacesOnRepeats {
        return s.racy_try(key, body).await;
    }
    let mut b = s.lock();
    if s.flaw != Flaw::NoDedup
        && let Some(r) = s.replay(&b, &key, &body)
    {
        return r;
    }
    let (status, answer) = s.reserve(&mut b);
    b.answered.insert(
        key,
        Answered {
            body,
            status,
            answer: answer.clone(),
        },
    );
    (status, axum::Json(answer)).into_response()
}

async fn confirm_handler(State(s): State<Service>, Path(id): Path<String>) -> StatusCode {
    let mut b = s.lock();
    let Some(h) = b.reservations.get_mut(&id) else {
        return unknown(s.flaw);
    };
    match (s.flaw, &h.state) {
        (Flaw::ConfirmRepeat404, ResState::Confirmed) => StatusCode::NOT_FOUND,
        (Flaw::ConfirmRepeat500, ResState::Confirmed) => StatusCode::INTERNAL_SERVER_ERROR,
        (Flaw::ConfirmAfterCancel204, ResState::Canceled)
        | (Flaw::ConfirmAfterExpiry, ResState::Reserved) => {
            h.state = ResState::Confirmed;
            StatusCode::NO_CONTENT
        }
        _ => settle(Settle::Confirm, &mut h.state, h.expires, Utc::now()),
    }
}

async fn cancel_handler(State(s): State<Service>, Path(id): Path<String>) -> StatusCode {
    let mut b = s.lock();
    let Some(h) = b.reservations.get_mut(&id) else {
        return unknown(s.flaw);
    };
    match (s.flaw, &h.state) {
        (Flaw::CancelAfterConfirm204, ResState::Confirmed) => StatusCode::NO_CONTENT,
        _ => settle(Settle::Cancel, &mut h.state, h.expires, Utc::now()),
    }
}

fn unknown(flaw: Flaw) -> StatusCode {
    if flaw == Flaw::UnknownLink200 {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// A running participant and its books.
struct Running {
    try_url: String,
    service: Service,
    _server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Reservations still held: reserved, and not yet expired.
    fn still_held(&self) -> usize {
        let now = Utc::now();
        let b = self.service.lock();
        b.reservations
            .values()
            .filter(|h| h.state == ResState::Reserved && h.expires > now)
            .count()
    }

    fn reservations(&self) -> usize {
        self.service.lock().reservations.len()
    }
}

async fn start(flaw: Flaw, hold: Duration) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the participant");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let service = Service {
        flaw,
        hold,
        base: base.clone(),
        books: Arc::default(),
    };
    let app = Router::new()
        .route("/holds", post(try_handler))
        .route("/holds/{id}", put(confirm_handler).delete(cancel_handler))
        .with_state(service.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Running {
        try_url: format!("{base}/holds"),
        service,
        _server: server,
    }
}

async fn run_check(p: &Running) -> Report {
    let mut options = CheckOptions::new(p.try_url.clone());
    options.max_wait = MAX_WAIT;
    options.body = json!({"quantity": 1});
    check(&options).await.expect("the check runs")
}

/// The checker fails exactly `rules` against a participant with `flaw`, passes the others
/// (the expiry rule aside, skipped: the reservations last long), and leaves nothing held.
async fn fails_exactly(flaw: Flaw, rules: &[&str]) {
    let p = start(flaw, LONG_HOLD).await;
    let report = run_check(&p).await;
    assert_eq!(report.failed_rules(), rules, "{flaw:?}:\n{report}");
    let expiry = report.finding(rule::CONFIRM_AFTER_EXPIRY_404);
    assert_eq!(
        expiry.map(|f| f.outcome),
        Some(Outcome::Skipped),
        "{report}"
    );
    assert_eq!(report.passed(), RULES.len() - rules.len() - 1, "{report}");
    assert_eq!(p.still_held(), 0, "{flaw:?} left reservations held");
}

#[tokio::test]
async fn a_correct_participant_passes_every_rule_and_nothing_stays_held() {
    let p = start(Flaw::None, SHORT_HOLD).await;
    let report = run_check(&p).await;
    let rules: Vec<&str> = report.findings.iter().map(|f| f.rule).collect();
    assert_eq!(rules, RULES, "every rule, in order");
    assert_eq!(report.passed(), RULES.len(), "{report}");
    assert_eq!(report.exit_code(), 0);
    assert!(report.unreleased.is_empty(), "{report}");
    assert_eq!(p.still_held(), 0, "nothing stays reserved:\n{report}");
    // The first Try, the expiry rule's, the concurrent Trys' one, the cancel rule's, and the
    // late Try's repeat: the repeats made none.
    assert_eq!(p.reservations(), 5, "{report}");
}

#[tokio::test]
async fn the_expiry_rule_is_skipped_beyond_max_wait_and_its_reservation_released() {
    let p = start(Flaw::None, LONG_HOLD).await;
    let report = run_check(&p).await;
    let expiry = report
        .finding(rule::CONFIRM_AFTER_EXPIRY_404)
        .expect("the expiry rule");
    assert_eq!(expiry.outcome, Outcome::Skipped, "{report}");
    assert!(expiry.detail.contains("--max-wait"), "{}", expiry.detail);
    assert_eq!(report.failed(), 0, "{report}");
    assert_eq!(report.exit_code(), 0, "a skipped rule fails nothing");
    assert_eq!(p.still_held(), 0, "{report}");
}

#[tokio::test]
async fn a_participant_without_deduplication_fails_every_repeat_rule() {
    fails_exactly(
        Flaw::NoDedup,
        &[
            rule::REPEAT_SAME_ANSWER,
            rule::REPEAT_OTHER_BODY_422,
            rule::CONCURRENT_REPEATS_ONE_RESERVATION,
        ],
    )
    .await;
}

#[tokio::test]
async fn a_repeat_with_a_new_expiry_fails_the_repeat_rule() {
    fails_exactly(Flaw::RefreshesExpiry, &[rule::REPEAT_SAME_ANSWER]).await;
}

#[tokio::test]
async fn another_body_under_the_same_ids_must_be_refused() {
    fails_exactly(Flaw::AcceptsOtherBody, &[rule::REPEAT_OTHER_BODY_422]).await;
}

#[tokio::test]
async fn concurrent_repeats_giving_different_links_fail_their_rule() {
    fails_exactly(
        Flaw::RacesOnRepeats,
        &[rule::CONCURRENT_REPEATS_ONE_RESERVATION],
    )
    .await;
}

#[tokio::test]
async fn a_confirm_that_is_not_idempotent_fails_the_repeat() {
    fails_exactly(Flaw::ConfirmRepeat404, &[rule::CONFIRM_REPEAT]).await;
    fails_exactly(Flaw::ConfirmRepeat500, &[rule::CONFIRM_REPEAT]).await;
}

#[tokio::test]
async fn a_cancel_after_confirm_must_answer_409() {
    fails_exactly(
        Flaw::CancelAfterConfirm204,
        &[rule::CANCEL_AFTER_CONFIRM_409],
    )
    .await;
}

#[tokio::test]
async fn a_confirm_after_cancel_must_answer_404() {
    fails_exactly(
        Flaw::ConfirmAfterCancel204,
        &[rule::CONFIRM_AFTER_CANCEL_404],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_link_must_answer_404() {
    fails_exactly(Flaw::UnknownLink200, &[rule::UNKNOWN_LINK_404]).await;
}

#[tokio::test]
async fn a_late_try_must_reserve_nothing() {
    fails_exactly(Flaw::IgnoresDeadline, &[rule::LATE_TRY_409]).await;
}

#[tokio::test]
async fn a_late_try_must_store_nothing() {
    fails_exactly(Flaw::StoresLateTry, &[rule::LATE_TRY_409]).await;
    let p = start(Flaw::StoresLateTry, LONG_HOLD).await;
    let report = run_check(&p).await;
    let late = report.finding(rule::LATE_TRY_409).expect("the late rule");
    assert!(late.detail.contains("was stored"), "{}", late.detail);
}

#[tokio::test]
async fn a_confirm_after_expiry_must_answer_404() {
    let p = start(Flaw::ConfirmAfterExpiry, SHORT_HOLD).await;
    let report = run_check(&p).await;
    assert_eq!(
        report.failed_rules(),
        [rule::CONFIRM_AFTER_EXPIRY_404],
        "{report}"
    );
    assert_eq!(report.passed(), RULES.len() - 1, "{report}");
}

#[tokio::test]
async fn a_try_without_a_link_fails_and_the_rules_that_need_one_are_skipped() {
    let p = start(Flaw::NoLink, LONG_HOLD).await;
    let report = run_check(&p).await;
    let first = report.finding(rule::TRY_ANSWER).expect("the Try rule");
    assert_eq!(first.outcome, Outcome::Fail, "{report}");
    assert!(first.detail.contains("no participant link"), "{report}");
    for r in [rule::REPEAT_SAME_ANSWER, rule::CONFIRM, rule::CANCEL] {
        let f = report.finding(r).expect("the rule");
        assert_eq!(f.outcome, Outcome::Skipped, "{r}: {report}");
    }
}

#[tokio::test]
async fn an_unreachable_participant_or_a_bad_url_cannot_be_checked() {
    let unreachable = CheckOptions::new(format!("http://127.0.0.1:{}/holds", free_port()));
    let err = check(&unreachable).await.err().unwrap_or_default();
    assert!(err.contains("could not reach"), "{err}");
    let bad = CheckOptions::new("holds");
    let err = check(&bad).await.err().unwrap_or_default();
    assert!(err.contains("TRY_URL"), "{err}");
}

/// The command: what it prints and how it exits.
async fn command(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"))
        .arg("check-participant")
        .args(args)
        // No coordinator setting is read: not even a malformed one stops the checker.
        .env("TCC_LISTEN", "not an address")
        .output()
        .await
        .expect("run the checker")
}

#[tokio::test]
async fn the_command_prints_a_table_and_exits_0_for_a_correct_participant() {
    let p = start(Flaw::None, LONG_HOLD).await;
    let out = command(&[&p.try_url, "--max-wait", "1"]).await;
    let text = printed(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for r in RULES {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(r));
        assert!(line.is_some(), "{r} is not in the table:\n{text}");
    }
    assert!(text.contains("skipped"), "{text}");
    assert_eq!(p.still_held(), 0, "{text}");
}

#[tokio::test]
async fn the_command_reports_json_and_exits_1_for_a_broken_participant() {
    let p = start(Flaw::UnknownLink200, LONG_HOLD).await;
    let out = command(&[&p.try_url, "--json", "--body", r#"{"quantity": 2}"#]).await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["tryURL"], p.try_url.as_str());
    assert_eq!(report["failed"], 1, "{report:#}");
    assert_eq!(report["skipped"], 1, "{report:#}");
    assert_eq!(report["passed"], RULES.len() - 2, "{report:#}");
    let rules = report["rules"].as_array().cloned().unwrap_or_default();
    assert_eq!(rules.len(), RULES.len());
    let failed: Vec<&Value> = rules.iter().filter(|r| r["result"] == "fail").collect();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0]["rule"], rule::UNKNOWN_LINK_404);
    assert!(
        failed[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("200"))
    );
}

#[tokio::test]
async fn the_command_exits_2_when_it_cannot_run() {
    let unreachable = format!("http://127.0.0.1:{}/holds", free_port());
    let out = command(&[&unreachable]).await;
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(
        printed(&out).contains("could not reach"),
        "{}",
        printed(&out)
    );

    let out = command(&[&unreachable, "--body", "{quantity: 1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(
        printed(&out).contains("--body is not JSON"),
        "{}",
        printed(&out)
    );

    let out = command(&["not-a-url"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(printed(&out).contains("TRY_URL"), "{}", printed(&out));

    let out = command(&[&unreachable, "--max-wait", "soon"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(printed(&out).contains("--max-wait"), "{}", printed(&out));
}

/// The chaos suite's participant (`tcc-chaos participant`), with no fault asked for, keeps every
/// rule: its reservations last 3 s, so that the expiry rule is checked too, not skipped.
#[tokio::test]
async fn the_chaos_suites_participant_keeps_every_rule() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tcc-chaos"))
        .args(["participant", "--listen", &listen, "--ttl", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start tcc-chaos participant");
    let _participant = Daemon(child);
    let listening =
        eventually(|| async { tokio::net::TcpStream::connect(&listen).await.is_ok() }).await;
    assert!(
        listening,
        "tcc-chaos participant never listened on {listen}"
    );
    let mut options = CheckOptions::new(format!("http://{listen}/try/item"));
    options.max_wait = MAX_WAIT;
    let report = check(&options).await.expect("the check runs");
    assert!(report.failed_rules().is_empty(), "{report}");
    assert_eq!(
        report.passed(),
        RULES.len(),
        "every rule checked:\n{report}"
    );
    assert!(report.unreleased.is_empty(), "{report}");
}
