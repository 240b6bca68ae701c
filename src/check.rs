//! The participant checker (`tcc-coordinator check-participant`): plays the coordinator against
//! one participant's Try URL and reports, rule by rule, whether the participant keeps the
//! protocol (docs/participant.md): pass, fail with what it saw, or skipped with why.
//!
//! It calls through [`ParticipantClient`], so the participant sees exactly what the coordinator
//! sends. Every rule uses its own `request-id` under one fresh `correlation-id`, so that rules do
//! not interfere; every reservation it still holds at the end is canceled. It opens no database
//! and reads no coordinator setting.
//!
//! From another crate's tests:
//!
//! ```no_run
//! # async fn example() -> Result<(), String> {
//! use tcc_coordinator::check::{CheckOptions, check};
//!
//! let mut options = CheckOptions::new("http://127.0.0.1:8080/items/apple/holds");
//! options.body = serde_json::json!({"quantity": 1});
//! let report = check(&options).await?;
//! assert!(report.failed_rules().is_empty(), "{report}");
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::domain::policy::TargetPolicy;
use crate::domain::{Answer, Link, TargetUrl, rfc3339};
use crate::participant::{CallIds, CallResult, ParticipantClient, TryCall};

/// How far ahead a reservation's `expires` may lie for the expiry rule to wait for it.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
/// Each call's timeout, as the coordinator's `TCC_CALL_TIMEOUT` would be.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many Trys with the same ids are sent at once for the concurrency rule.
pub const CONCURRENT_TRIES: usize = 8;

/// How long after a reservation's `expires` its confirm is sent: the participant's clock may
/// lag the checker's a little.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);
/// A call answered 408, 429 or 5xx is sent again, with the same ids, as the coordinator would;
/// the last of this many answers is judged.
const ATTEMPTS: u32 = 3;
/// The pause before sending again when the answer named none (`Retry-After`).
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// The longest pause before sending again, whatever `Retry-After` asks.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// The job deadline of the checker's Trys: a reservation without `expires` lasts until then.
const JOB_TTL_MINUTES: i64 = 10;
/// How long before now the `tcc-deadline` of the late Try lies.
const LATE_BY_SECONDS: i64 = 5;

/// The rules' ids: stable, relied on from outside (CI scripts, the `--json` report).
pub mod rule {
    /// A Try answers 200 or 201 with a participant link whose `expires` is in the future.
    pub const TRY_ANSWER: &str = "try-answer";
    /// A repeat with the same ids and body answers as the first time: same link, same `expires`.
    pub const REPEAT_SAME_ANSWER: &str = "repeat-same-answer";
    /// The same ids with another body answer 422.
    pub const REPEAT_OTHER_BODY_422: &str = "repeat-other-body-422";
    /// Repeats sent at once make one reservation: every answer carries the same link.
    pub const CONCURRENT_REPEATS_ONE_RESERVATION: &str = "concurrent-repeats-one-reservation";
    /// `PUT {link}` answers 2xx.
    pub const CONFIRM: &str = "confirm";
    /// A repeated confirm answers 2xx.
    pub const CONFIRM_REPEAT: &str = "confirm-repeat";
    /// `DELETE {link}` after a confirm answers 409.
    pub const CANCEL_AFTER_CONFIRM_409: &str = "cancel-after-confirm-409";
    /// `DELETE {link}` of a fresh reservation answers 2xx.
    pub const CANCEL: &str = "cancel";
    /// A repeated cancel answers 2xx.
    pub const CANCEL_REPEAT: &str = "cancel-repeat";
    /// `PUT {link}` after a cancel answers 404 or 410.
    pub const CONFIRM_AFTER_CANCEL_404: &str = "confirm-after-cancel-404";
    /// `PUT` and `DELETE` of a link the participant never gave answer 404 or 410.
    pub const UNKNOWN_LINK_404: &str = "unknown-link-404";
    /// `PUT {link}` once its `expires` has passed answers 404 or 410.
    pub const CONFIRM_AFTER_EXPIRY_404: &str = "confirm-after-expiry-404";
    /// A Try after its `tcc-deadline` answers 409 and stores nothing.
    pub const LATE_TRY_409: &str = "late-try-409";
}

/// Every rule, in the order of the report.
pub const RULES: [&str; 13] = [
    rule::TRY_ANSWER,
    rule::REPEAT_SAME_ANSWER,
    rule::REPEAT_OTHER_BODY_422,
    rule::CONCURRENT_REPEATS_ONE_RESERVATION,
    rule::CONFIRM,
    rule::CONFIRM_REPEAT,
    rule::CANCEL_AFTER_CONFIRM_409,
    rule::CANCEL,
    rule::CANCEL_REPEAT,
    rule::CONFIRM_AFTER_CANCEL_404,
    rule::UNKNOWN_LINK_404,
    rule::CONFIRM_AFTER_EXPIRY_404,
    rule::LATE_TRY_409,
];

/// What to check and how patiently.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The participant's Try URL (`POST`ed to); an absolute http or https URL.
    pub try_url: String,
    /// The Try body (`{}` by default): what this participant needs to reserve something.
    pub body: Value,
    /// The expiry rule waits for a reservation's `expires` only when it is at most this far
    /// ahead; otherwise it is skipped.
    pub max_wait: Duration,
    /// Each call's timeout.
    pub call_timeout: Duration,
}

impl CheckOptions {
    /// Options for `try_url` with the defaults: body `{}`, `max_wait` 30 s, calls of 10 s.
    pub fn new(try_url: impl Into<String>) -> Self {
        CheckOptions {
            try_url: try_url.into(),
            body: json!({}),
            max_wait: DEFAULT_MAX_WAIT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// What became of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skipped,
}

impl Outcome {
    /// The word of the report: `pass`, `fail` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One rule's result: what the participant answered, or why the rule was not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// One of [`RULES`].
    pub rule: &'static str,
    pub outcome: Outcome,
    /// What was seen (pass, fail), or why the rule was skipped.
    pub detail: String,
}

impl Finding {
    fn pass(rule: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            rule,
            outcome: Outcome::Pass,
            detail: detail.into(),
        }
    }

    fn fail(rule: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            rule,
            outcome: Outcome::Fail,
            detail: detail.into(),
        }
    }

    fn skipped(rule: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            rule,
            outcome: Outcome::Skipped,
            detail: detail.into(),
        }
    }
}

/// A finished check: one finding per rule, in the order of [`RULES`].
#[derive(Debug, Clone)]
pub struct Report {
    pub try_url: String,
    pub findings: Vec<Finding>,
    /// Links the final cancel could not release, each with what its cancel answered: the
    /// participant holds them until they expire.
    pub unreleased: Vec<String>,
}

impl Report {
    fn count(&self, outcome: Outcome) -> usize {
        self.findings
            .iter()
            .filter(|f| f.outcome == outcome)
            .count()
    }

    /// How many rules passed.
    pub fn passed(&self) -> usize {
        self.count(Outcome::Pass)
    }

    /// How many rules failed.
    pub fn failed(&self) -> usize {
        self.count(Outcome::Fail)
    }

    /// How many rules were skipped.
    pub fn skipped(&self) -> usize {
        self.count(Outcome::Skipped)
    }

    /// The ids of the rules that failed, in report order.
    pub fn failed_rules(&self) -> Vec<&'static str> {
        self.findings
            .iter()
            .filter(|f| f.outcome == Outcome::Fail)
            .map(|f| f.rule)
            .collect()
    }

    /// The finding of `rule`, if the report has it.
    pub fn finding(&self, rule: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.rule == rule)
    }

    /// The command's exit code: 0 when nothing failed, 1 when a rule failed.
    pub fn exit_code(&self) -> u8 {
        if self.failed() == 0 { 0 } else { 1 }
    }

    /// The `--json` report: `{"tryURL", "passed", "failed", "skipped", "rules": [{"rule",
    /// "result", "detail"}], "unreleased"}`.
    pub fn to_json(&self) -> Value {
        let rules: Vec<Value> = self
            .findings
            .iter()
            .map(|f| json!({"rule": f.rule, "result": f.outcome.as_str(), "detail": f.detail}))
            .collect();
        json!({
            "tryURL": self.try_url,
            "passed": self.passed(),
            "failed": self.failed(),
            "skipped": self.skipped(),
            "rules": rules,
            "unreleased": self.unreleased,
        })
    }
}

/// The default report: an aligned table, one line per rule, then the totals.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .findings
            .iter()
            .map(|x| x.rule.len())
            .chain(["RULE".len()])
            .max()
            .unwrap_or(0);
        writeln!(f, "Participant {}", self.try_url)?;
        writeln!(f)?;
        writeln!(f, "{:width$}  {:7}  DETAIL", "RULE", "RESULT")?;
        for x in &self.findings {
            let detail = x.detail.replace(['\n', '\r'], " ");
            writeln!(f, "{:width$}  {:7}  {detail}", x.rule, x.outcome.as_str())?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{} rules: {} passed, {} failed, {} skipped.",
            self.findings.len(),
            self.passed(),
            self.failed(),
            self.skipped()
        )?;
        if !self.unreleased.is_empty() {
            writeln!(
                f,
                "Not released (the participant holds them until they expire):"
            )?;
            for u in &self.unreleased {
                writeln!(f, "  {u}")?;
            }
        }
        Ok(())
    }
}

/// Checks the participant at `options.try_url` against every rule of [`RULES`] and cancels
/// what it reserved. `Err` means the check could not run (a malformed URL, a participant that
/// cannot be reached): nothing was reserved then.
pub async fn check(options: &CheckOptions) -> Result<Report, String> {
    let try_url = TargetUrl::parse(&options.try_url)
        .map_err(|why| format!("TRY_URL {:?} {why}", options.try_url))?;
    let policy = policy_for(&try_url).await?;
    let client = ParticipantClient::new(CONCURRENT_TRIES, Arc::new(policy))
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut run = Run {
        client,
        options,
        try_url,
        correlation_id: format!("check-{}", uuid::Uuid::now_v7()),
        held: Vec::new(),
        settled: HashSet::new(),
    };
    let findings = run.all().await?;
    let unreleased = run.release().await;
    Ok(Report {
        try_url: options.try_url.clone(),
        findings,
        unreleased,
    })
}

/// A policy that lets the checker call what the user pointed it at: any host (`*`), and the Try
/// URL's own addresses even when link-local, which `*` alone refuses.
async fn policy_for(try_url: &TargetUrl) -> Result<TargetPolicy, String> {
    let parsed = url::Url::parse(try_url.as_str())
        .map_err(|e| format!("TRY_URL {try_url:?} is not a URL: {e}"))?;
    let mut entries = vec!["*".to_string()];
    match parsed.host() {
        Some(url::Host::Ipv4(v4)) => entries.push(v4.to_string()),
        Some(url::Host::Ipv6(v6)) => entries.push(v6.to_string()),
        Some(url::Host::Domain(name)) => {
            let port = parsed.port_or_known_default().unwrap_or(80);
            // A name that does not resolve fails the first Try, which says so.
            if let Ok(found) = tokio::net::lookup_host((name, port)).await {
                let ips: HashSet<IpAddr> = found.map(|a| a.ip()).collect();
                entries.extend(ips.iter().map(IpAddr::to_string));
            }
        }
        None => {}
    }
    entries
        .join(",")
        .parse()
        .map_err(|e| format!("cannot allow TRY_URL's host: {e}"))
}

/// What a Try answered, as the checker judges it.
enum Tried {
    /// A usable participant link. `expires_sent` is the answer's `expires` as written (absent
    /// for a bare `Location`).
    Reserved {
        link: Link,
        expires_sent: Option<String>,
        status: u16,
    },
    /// Anything else: a refusal, an unusable answer, no answer at all (`status` absent).
    NotReserved { status: Option<u16>, text: String },
}

impl Tried {
    fn from_result(result: CallResult, attempts: u32) -> Self {
        let status = result.http_status;
        match result.answer {
            Answer::Reserved {
                link: Some(link),
                response,
                ..
            } => Tried::Reserved {
                expires_sent: response
                    .as_ref()
                    .and_then(|r| r.pointer("/participantLink/expires"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                link,
                status: status.unwrap_or(0),
            },
            other => Tried::NotReserved {
                status,
                text: with_attempts(said(status, &other), attempts),
            },
        }
    }

    fn link(&self) -> Option<&Link> {
        match self {
            Tried::Reserved { link, .. } => Some(link),
            Tried::NotReserved { .. } => None,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Tried::Reserved { status, .. } => Some(*status),
            Tried::NotReserved { status, .. } => *status,
        }
    }

    /// The answer in a few words: `HTTP 201, link …, expires …`, or what was wrong.
    fn describe(&self) -> String {
        match self {
            Tried::Reserved {
                link,
                expires_sent,
                status,
            } => format!(
                "HTTP {status}, link {}, expires {}",
                link.uri,
                expires_sent.as_deref().unwrap_or("not given")
            ),
            Tried::NotReserved { text, .. } => text.clone(),
        }
    }
}

/// What a confirm or cancel answered.
struct Settled {
    status: Option<u16>,
    text: String,
}

impl Settled {
    fn from_result(result: CallResult, attempts: u32) -> Self {
        let status = result.http_status;
        Settled {
            status,
            text: with_attempts(said(status, &result.answer), attempts),
        }
    }

    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    fn gone(&self) -> bool {
        matches!(self.status, Some(404 | 410))
    }
}

/// An answer as the report shows it: its status and what the client made of it.
fn said(status: Option<u16>, answer: &Answer) -> String {
    let message = match answer {
        Answer::Reserved {
            link: Some(link), ..
        } => format!("link {}", link.uri),
        Answer::Reserved { link: None, .. } => "no link".to_string(),
        Answer::Done => String::new(),
        Answer::Retryable { message, .. }
        | Answer::Unknown { message }
        | Answer::Refused { message }
        | Answer::Gone { message }
        | Answer::NotImplemented { message }
        | Answer::AlreadyConfirmed { message } => message.clone(),
    };
    match status {
        None => format!("no answer: {message}"),
        Some(code) if message.is_empty() => format!("HTTP {code}"),
        // The client's messages name the call ("the cancel answered HTTP 409"): the report
        // names it already.
        Some(code) => match message.find(&format!("HTTP {code}")) {
            Some(at) => message[at..].to_string(),
            None => format!("HTTP {code}: {message}"),
        },
    }
}

fn with_attempts(text: String, attempts: u32) -> String {
    if attempts > 1 {
        format!("{text} (after {attempts} attempts)")
    } else {
        text
    }
}

/// Sends a call again, as the coordinator would, while it answers 408, 429 or 5xx (at most
/// [`ATTEMPTS`] times); returns the last result and how many were sent. A call that got no
/// answer at all is not sent again: the rule reports it.
async fn with_retries<F, Fut>(mut call: F) -> (CallResult, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = CallResult>,
{
    let mut attempts = 1;
    loop {
        let result = call().await;
        let pause = match (&result.answer, result.http_status) {
            (Answer::Retryable { retry_after, .. }, Some(_)) => {
                Some(retry_after.unwrap_or(RETRY_DELAY).min(MAX_RETRY_DELAY))
            }
            (Answer::Unknown { .. }, Some(_)) => Some(RETRY_DELAY),
            _ => None,
        };
        match pause {
            Some(p) if attempts < ATTEMPTS => tokio::time::sleep(p).await,
            _ => return (result, attempts),
        }
        attempts += 1;
    }
}

/// The body of the "another body" repeat: the Try body with a member it did not have.
fn other_body(body: &Value) -> Value {
    let mark = Value::String(format!("check-{}", uuid::Uuid::now_v7()));
    match body {
        Value::Object(members) => {
            let mut changed = members.clone();
            changed.insert("tccCheck".into(), mark);
            Value::Object(changed)
        }
        other => json!({"tccCheck": mark, "body": other}),
    }
}

/// `link` with its last path segment replaced by one the participant never gave.
fn unknown_link(link: &Link) -> Option<Link> {
    let mut url = url::Url::parse(link.uri.as_str()).ok()?;
    let made_up = format!("check-unknown-{}", uuid::Uuid::now_v7().simple());
    url.path_segments_mut().ok()?.pop().push(&made_up);
    Some(Link {
        uri: TargetUrl::from_url(url).ok()?,
        expires: link.expires,
    })
}

/// One check in progress: the client, the ids, and what is held.
struct Run<'a> {
    client: ParticipantClient,
    options: &'a CheckOptions,
    try_url: TargetUrl,
    /// Fresh for each check; each rule adds its own `request-id`.
    correlation_id: String,
    /// Every link a Try answered, in order: released at the end unless settled.
    held: Vec<Link>,
    /// The links (by URI) confirmed, canceled or gone: nothing left to release.
    settled: HashSet<String>,
}

impl Run<'_> {
    /// Every rule, in the order of [`RULES`]. The expiry rule's reservation is made early, so
    /// that its wait overlaps the other rules.
    async fn all(&mut self) -> Result<Vec<Finding>, String> {
        let body = self.options.body.clone();
        let first = self.reserve("try-answer", &body, self.deadline()).await;
        if let Tried::NotReserved { status: None, text } = &first {
            return Err(format!(
                "could not reach the participant at {}: {text}",
                self.try_url
            ));
        }
        let mut out = vec![judge_try_answer(&first)];
        let expiring = self.reserve("expiry", &body, self.deadline()).await;
        let expiring_at = Utc::now();
        out.extend(self.repeats(&first, &body).await);
        out.push(self.concurrent_repeats(&body).await);
        out.extend(self.confirms(first.link()).await);
        let canceled = self.reserve("cancel", &body, self.deadline()).await;
        out.extend(self.cancels(&canceled).await);
        let known = canceled.link().or(first.link()).cloned();
        out.push(self.unknown(known.as_ref()).await);
        let late = self.late_try(&body).await;
        out.push(self.expiry(&expiring, expiring_at).await);
        out.push(late);
        Ok(out)
    }

    /// The job deadline of an ordinary Try: well ahead.
    fn deadline(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::minutes(JOB_TTL_MINUTES)
    }

    fn ids<'b>(&'b self, request_id: &'b str) -> CallIds<'b> {
        CallIds {
            correlation_id: &self.correlation_id,
            request_id,
            traceparent: None,
        }
    }

    /// A Try under `request_id` (sent again on 408, 429, 5xx), without keeping its link.
    async fn try_once(&self, request_id: &str, body: &Value, deadline: DateTime<Utc>) -> Tried {
        let (result, attempts) = with_retries(|| {
            self.client.try_reserve(TryCall {
                url: &self.try_url,
                body,
                ids: self.ids(request_id),
                timeout: self.options.call_timeout,
                job_deadline: deadline,
                needs_link: true,
            })
        })
        .await;
        Tried::from_result(result, attempts)
    }

    /// A Try whose link, if any, is kept to be released at the end.
    async fn reserve(&mut self, request_id: &str, body: &Value, deadline: DateTime<Utc>) -> Tried {
        let tried = self.try_once(request_id, body, deadline).await;
        if let Some(link) = tried.link() {
            self.hold(link);
        }
        tried
    }

    fn hold(&mut self, link: &Link) {
        if !self.held.iter().any(|h| h.uri == link.uri) {
            self.held.push(link.clone());
        }
    }

    /// `PUT {link}` (sent again on 408, 429, 5xx); a link confirmed or gone needs no release.
    async fn confirm(&mut self, link: &Link, request_id: &str) -> Settled {
        let timeout = self.options.call_timeout;
        let (result, attempts) = with_retries(|| async {
            self.client
                .confirm(link, &self.ids(request_id), timeout)
                .await
        })
        .await;
        let settled = Settled::from_result(result, attempts);
        if settled.ok() || settled.gone() {
            self.settled.insert(link.uri.to_string());
        }
        settled
    }

    /// `DELETE {link}` (sent again on 408, 429, 5xx); a link canceled, confirmed (409) or gone
    /// needs no release.
    async fn cancel(&mut self, link: &Link, request_id: &str) -> Settled {
        let timeout = self.options.call_timeout;
        let (result, attempts) = with_retries(|| async {
            self.client
                .cancel(link, &self.ids(request_id), timeout)
                .await
        })
        .await;
        let settled = Settled::from_result(result, attempts);
        if settled.ok() || settled.gone() || settled.status == Some(409) {
            self.settled.insert(link.uri.to_string());
        }
        settled
    }

    /// `repeat-same-answer` and `repeat-other-body-422`, on the first Try's ids.
    async fn repeats(&mut self, first: &Tried, body: &Value) -> [Finding; 2] {
        let Tried::Reserved {
            link, expires_sent, ..
        } = first
        else {
            let why = "the first Try reserved nothing";
            return [
                Finding::skipped(rule::REPEAT_SAME_ANSWER, why),
                Finding::skipped(rule::REPEAT_OTHER_BODY_422, why),
            ];
        };
        let again = self.reserve("try-answer", body, self.deadline()).await;
        let same = match &again {
            Tried::Reserved {
                link: l,
                expires_sent: e,
                ..
            } if l.uri == link.uri && e == expires_sent => Finding::pass(
                rule::REPEAT_SAME_ANSWER,
                format!("the repeat answered {}, as the first Try", again.describe()),
            ),
            _ => Finding::fail(
                rule::REPEAT_SAME_ANSWER,
                format!(
                    "the first Try answered {}; the repeat with the same ids and body answered {}",
                    first.describe(),
                    again.describe()
                ),
            ),
        };
        let other = self
            .reserve("try-answer", &other_body(body), self.deadline())
            .await;
        let what = "the same ids with another body (one more member, \"tccCheck\")";
        let differing = match (&other, other.status()) {
            (_, Some(422)) => Finding::pass(
                rule::REPEAT_OTHER_BODY_422,
                format!("{what} answered HTTP 422"),
            ),
            (Tried::Reserved { link: l, .. }, _) if l.uri == link.uri => Finding::fail(
                rule::REPEAT_OTHER_BODY_422,
                format!(
                    "{what} answered {}: the first Try's answer, as if the body were the same; expected 422",
                    other.describe()
                ),
            ),
            _ => Finding::fail(
                rule::REPEAT_OTHER_BODY_422,
                format!("{what} answered {}; expected 422", other.describe()),
            ),
        };
        [same, differing]
    }

    /// `concurrent-repeats-one-reservation`: [`CONCURRENT_TRIES`] Trys with the same fresh ids at
    /// once.
    async fn concurrent_repeats(&mut self, body: &Value) -> Finding {
        const RULE: &str = rule::CONCURRENT_REPEATS_ONE_RESERVATION;
        let deadline = self.deadline();
        let answers = {
            let this = &*self;
            futures::future::join_all(
                (0..CONCURRENT_TRIES).map(|_| this.try_once("concurrent", body, deadline)),
            )
            .await
        };
        let mut links: Vec<String> = Vec::new();
        for link in answers.iter().filter_map(Tried::link) {
            self.hold(link);
            if !links.contains(&link.uri.to_string()) {
                links.push(link.uri.to_string());
            }
        }
        let refused: Vec<&Tried> = answers.iter().filter(|a| a.link().is_none()).collect();
        if let Some(first) = refused.first() {
            return Finding::fail(
                RULE,
                format!(
                    "{} of {CONCURRENT_TRIES} Trys sent at once with the same ids reserved nothing; one answered {}",
                    refused.len(),
                    first.describe()
                ),
            );
        }
        match links.as_slice() {
            [one] => Finding::pass(
                RULE,
                format!(
                    "{CONCURRENT_TRIES} Trys sent at once with the same ids all answered the link {one}"
                ),
            ),
            many => Finding::fail(
                RULE,
                format!(
                    "{CONCURRENT_TRIES} Trys sent at once with the same ids made {} reservations: {}",
                    many.len(),
                    many.join(", ")
                ),
            ),
        }
    }

    /// `confirm`, `confirm-repeat` and `cancel-after-confirm-409`, on the first Try's link.
    async fn confirms(&mut self, link: Option<&Link>) -> [Finding; 3] {
        let Some(link) = link else {
            let why = "the first Try reserved nothing";
            return [
                Finding::skipped(rule::CONFIRM, why),
                Finding::skipped(rule::CONFIRM_REPEAT, why),
                Finding::skipped(rule::CANCEL_AFTER_CONFIRM_409, why),
            ];
        };
        let confirmed = self.confirm(link, "try-answer").await;
        if !confirmed.ok() {
            let why = "the confirm failed";
            return [
                Finding::fail(
                    rule::CONFIRM,
                    format!("PUT {} answered {}; expected 2xx", link.uri, confirmed.text),
                ),
                Finding::skipped(rule::CONFIRM_REPEAT, why),
                Finding::skipped(rule::CANCEL_AFTER_CONFIRM_409, why),
            ];
        }
        let first = Finding::pass(
            rule::CONFIRM,
            format!("PUT {} answered {}", link.uri, confirmed.text),
        );
        let again = self.confirm(link, "try-answer").await;
        let repeat = if again.ok() {
            Finding::pass(
                rule::CONFIRM_REPEAT,
                format!("the second PUT answered {}", again.text),
            )
        } else {
            Finding::fail(
                rule::CONFIRM_REPEAT,
                format!(
                    "the second PUT of a confirmed link answered {}; expected 2xx",
                    again.text
                ),
            )
        };
        let canceled = self.cancel(link, "try-answer").await;
        let after = match canceled.status {
            Some(409) => Finding::pass(
                rule::CANCEL_AFTER_CONFIRM_409,
                format!("DELETE of the confirmed link answered {}", canceled.text),
            ),
            _ if canceled.ok() => Finding::fail(
                rule::CANCEL_AFTER_CONFIRM_409,
                format!(
                    "DELETE of the confirmed link answered {}: a cancel after a confirm must answer 409 (the coordinator would take the reservation as released)",
                    canceled.text
                ),
            ),
            _ => Finding::fail(
                rule::CANCEL_AFTER_CONFIRM_409,
                format!(
                    "DELETE of the confirmed link answered {}; expected 409",
                    canceled.text
                ),
            ),
        };
        [first, repeat, after]
    }

    /// `cancel`, `cancel-repeat` and `confirm-after-cancel-404`, on a reservation of their own.
    async fn cancels(&mut self, tried: &Tried) -> [Finding; 3] {
        let Some(link) = tried.link() else {
            let why = format!("its Try reserved nothing: {}", tried.describe());
            return [
                Finding::skipped(rule::CANCEL, why.clone()),
                Finding::skipped(rule::CANCEL_REPEAT, why.clone()),
                Finding::skipped(rule::CONFIRM_AFTER_CANCEL_404, why),
            ];
        };
        let canceled = self.cancel(link, "cancel").await;
        if !canceled.ok() {
            let why = "the cancel failed";
            return [
                Finding::fail(
                    rule::CANCEL,
                    format!(
                        "DELETE {} of a fresh reservation answered {}; expected 2xx",
                        link.uri, canceled.text
                    ),
                ),
                Finding::skipped(rule::CANCEL_REPEAT, why),
                Finding::skipped(rule::CONFIRM_AFTER_CANCEL_404, why),
            ];
        }
        let first = Finding::pass(
            rule::CANCEL,
            format!("DELETE {} answered {}", link.uri, canceled.text),
        );
        let again = self.cancel(link, "cancel").await;
        let repeat = if again.ok() {
            Finding::pass(
                rule::CANCEL_REPEAT,
                format!("the second DELETE answered {}", again.text),
            )
        } else {
            Finding::fail(
                rule::CANCEL_REPEAT,
                format!(
                    "the second DELETE of a canceled link answered {}; expected 2xx",
                    again.text
                ),
            )
        };
        let confirmed = self.confirm(link, "cancel").await;
        let after = if confirmed.gone() {
            Finding::pass(
                rule::CONFIRM_AFTER_CANCEL_404,
                format!("PUT of the canceled link answered {}", confirmed.text),
            )
        } else {
            Finding::fail(
                rule::CONFIRM_AFTER_CANCEL_404,
                format!(
                    "PUT of the canceled link answered {}; expected 404 or 410",
                    confirmed.text
                ),
            )
        };
        [first, repeat, after]
    }

    /// `unknown-link-404`: `PUT` and `DELETE` of a made-up link beside a real one.
    async fn unknown(&mut self, known: Option<&Link>) -> Finding {
        const RULE: &str = rule::UNKNOWN_LINK_404;
        let Some(known) = known else {
            return Finding::skipped(RULE, "no Try reserved anything to make a link up from");
        };
        let Some(link) = unknown_link(known) else {
            return Finding::skipped(
                RULE,
                format!(
                    "the link {} has no path segment to change into an unknown one",
                    known.uri
                ),
            );
        };
        let put = self.confirm(&link, "unknown-link").await;
        let delete = self.cancel(&link, "unknown-link").await;
        let seen = format!(
            "PUT {} answered {}; DELETE answered {}",
            link.uri, put.text, delete.text
        );
        if put.gone() && delete.gone() {
            Finding::pass(RULE, seen)
        } else {
            Finding::fail(RULE, format!("{seen}; expected 404 or 410 to both"))
        }
    }

    /// `late-try-409`: a Try whose `tcc-deadline` has passed answers 409; the same ids with a
    /// later deadline then reserve (had the late Try been stored, its 409 would be replayed).
    async fn late_try(&mut self, body: &Value) -> Finding {
        const RULE: &str = rule::LATE_TRY_409;
        let passed = Utc::now() - chrono::Duration::seconds(LATE_BY_SECONDS);
        let late = self.reserve("late-try", body, passed).await;
        let when = format!("a Try with tcc-deadline {} (passed)", rfc3339(passed));
        if late.status() != Some(409) {
            let also = if late.link().is_some() {
                ": it reserved after the deadline"
            } else {
                ""
            };
            return Finding::fail(
                RULE,
                format!("{when} answered {}{also}; expected 409", late.describe()),
            );
        }
        let again = self.reserve("late-try", body, self.deadline()).await;
        match again.link().cloned() {
            Some(link) => {
                // Released at once: this reservation serves no other rule.
                self.cancel(&link, "late-try").await;
                Finding::pass(
                    RULE,
                    format!(
                        "{when} answered HTTP 409; the same ids with a later deadline then reserved (nothing was stored)"
                    ),
                )
            }
            None if again.status() == Some(409) => Finding::fail(
                RULE,
                format!(
                    "{when} answered HTTP 409, but the same ids with a later deadline answered {} again: the late Try was stored",
                    again.describe()
                ),
            ),
            None => Finding::fail(
                RULE,
                format!(
                    "{when} answered HTTP 409, but the same ids with a later deadline answered {}; expected a reservation",
                    again.describe()
                ),
            ),
        }
    }

    /// `confirm-after-expiry-404`: once the reservation's `expires` has passed (when it is
    /// within `max_wait` of its Try), `PUT {link}` answers 404 or 410.
    async fn expiry(&mut self, tried: &Tried, tried_at: DateTime<Utc>) -> Finding {
        const RULE: &str = rule::CONFIRM_AFTER_EXPIRY_404;
        let (link, sent) = match tried {
            Tried::Reserved {
                link,
                expires_sent: Some(sent),
                ..
            } => (link, sent),
            Tried::Reserved { .. } => {
                return Finding::skipped(RULE, "the Try answer gave no expires");
            }
            Tried::NotReserved { .. } => {
                return Finding::skipped(
                    RULE,
                    format!("its Try reserved nothing: {}", tried.describe()),
                );
            }
        };
        let ahead = (link.expires - tried_at).to_std().unwrap_or_default();
        if ahead > self.options.max_wait {
            let secs = ahead.as_secs() + 1;
            return Finding::skipped(
                RULE,
                format!(
                    "expires {sent} is {secs} s after the Try, beyond --max-wait {} s; give --max-wait {secs} to check it",
                    self.options.max_wait.as_secs_f64()
                ),
            );
        }
        let left = (link.expires - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(left + EXPIRY_MARGIN).await;
        let confirmed = self.confirm(link, "expiry").await;
        let seen = format!("PUT after expires {sent} answered {}", confirmed.text);
        if confirmed.gone() {
            Finding::pass(RULE, seen)
        } else if confirmed.ok() {
            Finding::fail(
                RULE,
                format!("{seen}: an expired reservation was confirmed; expected 404 or 410"),
            )
        } else {
            Finding::fail(RULE, format!("{seen}; expected 404 or 410"))
        }
    }

    /// Cancels every link still held; returns those it could not release, with why.
    async fn release(&mut self) -> Vec<String> {
        let open: Vec<Link> = self
            .held
            .iter()
            .filter(|l| !self.settled.contains(l.uri.as_str()))
            .cloned()
            .collect();
        let mut unreleased = Vec::new();
        for link in open {
            let canceled = self.cancel(&link, "release").await;
            if !(canceled.ok() || canceled.gone() || canceled.status == Some(409)) {
                unreleased.push(format!("{}: DELETE answered {}", link.uri, canceled.text));
            }
        }
        unreleased
    }
}

/// `try-answer`: the first Try reserved, with a link whose `expires` lies ahead (the client
/// refuses one already past).
fn judge_try_answer(first: &Tried) -> Finding {
    match first {
        Tried::Reserved {
            expires_sent: None, ..
        } => Finding::pass(
            rule::TRY_ANSWER,
            format!(
                "{} (without expires the coordinator takes the job deadline)",
                first.describe()
            ),
        ),
        Tried::Reserved { .. } => Finding::pass(rule::TRY_ANSWER, first.describe()),
        Tried::NotReserved { status, .. } => {
            let hint = match status {
                Some(400 | 409 | 422) => "; give --body the Try body this participant expects",
                _ => "",
            };
            Finding::fail(
                rule::TRY_ANSWER,
                format!(
                    "POST answered {}{hint}; expected 200 or 201 with a participant link",
                    first.describe()
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(uri: &str) -> Link {
        Link {
            uri: TargetUrl::parse(uri).expect("a URL"),
            expires: Utc::now(),
        }
    }

    #[test]
    fn an_unknown_link_changes_only_the_last_segment() {
        let made = unknown_link(&link("http://p:9/r/abc?x=1")).map(|l| l.uri.to_string());
        let made = made.unwrap_or_default();
        assert!(made.starts_with("http://p:9/r/check-unknown-"), "{made}");
        assert!(made.ends_with("?x=1"), "{made}");
    }

    #[test]
    fn another_body_differs_from_the_body() {
        for body in [json!({}), json!({"quantity": 1}), json!([1]), json!(null)] {
            assert_ne!(other_body(&body), body);
        }
    }

    #[test]
    fn answers_name_their_status_once() {
        let gone = Answer::Gone {
            message: "the confirm answered HTTP 404: the reservation is gone".into(),
        };
        assert_eq!(said(Some(404), &gone), "HTTP 404: the reservation is gone");
        assert_eq!(said(Some(204), &Answer::Done), "HTTP 204");
        let refused = Answer::Refused {
            message: "no link".into(),
        };
        assert_eq!(said(Some(201), &refused), "HTTP 201: no link");
        assert!(said(None, &refused).starts_with("no answer"));
    }

    #[test]
    fn the_table_aligns_and_counts() {
        let report = Report {
            try_url: "http://p/try".into(),
            findings: vec![
                Finding::pass(rule::TRY_ANSWER, "HTTP 201"),
                Finding::fail(rule::CONCURRENT_REPEATS_ONE_RESERVATION, "two links"),
                Finding::skipped(rule::CONFIRM_AFTER_EXPIRY_404, "too far"),
            ],
            unreleased: Vec::new(),
        };
        let text = report.to_string();
        let column = |rule: &str| {
            text.lines()
                .find(|l| l.starts_with(rule))
                .and_then(|l| l[rule.len()..].find(|c: char| c != ' '))
                .map(|i| i + rule.len())
        };
        assert_eq!(
            column(rule::TRY_ANSWER),
            column(rule::CONCURRENT_REPEATS_ONE_RESERVATION)
        );
        assert!(text.contains("3 rules: 1 passed, 1 failed, 1 skipped."));
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.to_json()["rules"][1]["result"], "fail");
    }
}
