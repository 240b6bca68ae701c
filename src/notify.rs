//! Delivering the notification outbox (docs/api.md, "Callbacks and calling for help"): callbacks, the contact's and the operators'
//! webhooks, email. Each instance runs one `Notifier`: it claims due notifications (one
//! instance per notification, `store::claim_notifications`), delivers them, and records each
//! attempt; a failed attempt is retried with capped backoff and jitter until `TCC_NOTIFY_MAX_AGE`
//! after the notification was written. A claim lapses, so a delivery whose instance died in the
//! middle goes out again: at least once.
//!
//! A webhook or callback is `POST {target}` with `{"event": "job.<status>", "job": <the job's
//! representation>}`, headers `correlation-id`, `tcc-event`, and with `TCC_WEBHOOK_SECRET`
//! `tcc-signature: sha256=<hex HMAC-SHA256 of the exact body>`. Any 2xx delivers it; the answer
//! is read at most 64 KiB, within the call's timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use hmac::{Hmac, KeyInit, Mac};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::repr::JobRepr;
use crate::domain::notify::Channel;
use crate::metrics as m;
use crate::store::{self, ClaimedNotification, Delivery, StoreError};

/// The most notifications claimed at once.
const BATCH: i64 = 32;
/// How long notifications gather before a claim that is not a full batch's follow-up: a batch
/// costs four statements (claim, the jobs, their notifications, the outcomes) however many it
/// carries, and a notification is on its way no more than this much later.
const GATHER: Duration = Duration::from_millis(20);
/// The most of a receiver's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;
/// Backoff between attempts: from 1 s, doubling, at most 10 minutes (with jitter).
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Signs deliveries (`TCC_WEBHOOK_SECRET`).
    pub secret: Option<String>,
    /// How long a notification is retried (`TCC_NOTIFY_MAX_AGE`).
    pub max_age: Duration,
    /// The base of the job URLs in the bodies (`TCC_PUBLIC_URL`, else the listen address).
    pub base_url: String,
    /// How often due retries are looked for.
    pub scan_interval: Duration,
    /// One delivery's time limit (`TCC_CALL_TIMEOUT`, as for participant calls). A claim holds
    /// three times as long: past it, a delivery whose instance died goes out again.
    pub call_timeout: Duration,
    /// Where email goes (`TCC_SMTP_URL`, `TCC_SMTP_FROM`); `None`: no email is sent.
    pub smtp: Option<Smtp>,
    /// `TCC_ALLOWED_TARGETS`: a callback or webhook it refuses is given up at once.
    pub targets: Arc<crate::domain::policy::TargetPolicy>,
}

/// An SMTP server and the sender's address.
#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold credentials: never shown.
        f.debug_struct("Smtp").field("from", &self.from).finish()
    }
}

impl Smtp {
    /// From `TCC_SMTP_URL` and `TCC_SMTP_FROM`; each call bounded by `timeout`.
    pub fn new(url: &str, from: &str, timeout: Duration) -> anyhow::Result<Smtp> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("TCC_SMTP_URL: {e}"))?
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("TCC_SMTP_FROM: {e}"))?;
        Ok(Smtp { transport, from })
    }
}

pub struct Notifier {
    pool: Pool,
    http: reqwest::Client,
    settings: NotifySettings,
    /// Rung by the engine when it wrote notifications.
    signal: Arc<Notify>,
}

/// The signature header's value for `body`: `sha256=<hex HMAC-SHA256>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The delay before attempt `attempts + 1`, with `jitter` in [0, 1): half to all of the capped
/// exponential step.
fn backoff(attempts: i32, jitter: f64) -> Duration {
    let exp = attempts.clamp(1, 20) as u32 - 1;
    let step = FIRST_DELAY
        .saturating_mul(2u32.saturating_pow(exp))
        .min(MAX_DELAY);
    step.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

impl Notifier {
    pub fn new(pool: Pool, settings: NotifySettings, signal: Arc<Notify>) -> anyhow::Result<Self> {
        let http = crate::outbound::client_builder(settings.targets.clone())
            .connect_timeout(Duration::from_secs(5))
            .timeout(settings.call_timeout)
            .user_agent(concat!("tcc-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Notifier {
            pool,
            http,
            settings,
            signal,
        })
    }

    /// Deliver until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        loop {
            let claimed = match this.claim().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "notifications: cannot claim; trying again");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = this.signal.notified() => {}
                    _ = tokio::time::sleep(this.settings.scan_interval) => {}
                }
                if !this.gather(&stop).await {
                    return;
                }
                continue;
            }
            let full = claimed.len() as i64 >= BATCH;
            let jobs = this.jobs(&claimed).await;
            let deliveries = claimed.into_iter().map(|c| {
                let this = this.clone();
                let job = match &jobs {
                    Ok(jobs) => jobs.get(c.job_id.as_str()).cloned().ok_or_else(|| {
                        Attempt::Permanent(format!("job {} no longer exists", c.job_id))
                    }),
                    Err(e) => Err(Attempt::Again(format!("the job could not be read: {e}"))),
                };
                async move { this.attempt(c, job).await }
            });
            // A shutdown waits for the attempts under way (each bounded by its timeout); what
            // is not recorded goes out again once its claim lapses.
            let outcomes = futures::future::join_all(deliveries).await;
            let recorded = async {
                let client = this.pool.get().await?;
                store::record_deliveries(&client, &outcomes).await
            };
            if let Err(e) = recorded.await {
                // The claims lapse and the notifications are attempted again.
                tracing::warn!(error = %e, "notification outcomes not recorded");
            }
            if stop.is_cancelled() || (!full && !this.gather(&stop).await) {
                return;
            }
        }
    }

    /// Let the next batch gather (`GATHER`). `false`: stopped meanwhile.
    async fn gather(&self, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(GATHER) => true,
        }
    }

    async fn claim(&self) -> Result<Vec<ClaimedNotification>, StoreError> {
        let client = self.pool.get().await?;
        store::claim_notifications(&client, BATCH, self.settings.call_timeout * 3).await
    }

    /// The claimed notifications' jobs as their representations show them, read together.
    async fn jobs(
        &self,
        claimed: &[ClaimedNotification],
    ) -> Result<HashMap<String, Arc<store::JobRecord>>, StoreError> {
        let mut ids: Vec<&str> = claimed.iter().map(|c| c.job_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let client = self.pool.get().await?;
        Ok(store::load_shown_many(&client, &ids)
            .await?
            .into_iter()
            .map(|(id, record)| (id, Arc::new(record)))
            .collect())
    }

    /// One attempt, counted and logged; its outcome to record.
    async fn attempt(&self, c: ClaimedNotification, job: Shown) -> (i64, Delivery) {
        let channel = Channel::parse(&c.n.channel).unwrap_or(Channel::Webhook);
        let outcome = match self.deliver(&c, channel, job).await {
            Ok(()) => Delivery::Delivered,
            Err(Attempt::Permanent(e)) => Delivery::Failed(e),
            Err(Attempt::Again(e)) => {
                let age = chrono::Utc::now() - c.n.created_at;
                let delay = backoff(c.n.attempts, fastrand::f64());
                let give_up = chrono::Duration::from_std(self.settings.max_age + delay)
                    .is_ok_and(|max| age >= max);
                if give_up {
                    Delivery::Failed(format!(
                        "{e} (given up after {} attempts: TCC_NOTIFY_MAX_AGE)",
                        c.n.attempts
                    ))
                } else {
                    Delivery::Retry(delay, e)
                }
            }
        };
        let label = match &outcome {
            Delivery::Delivered => "delivered",
            Delivery::Retry(..) => "retry",
            Delivery::Failed(_) => "failed",
        };
        metrics::counter!(m::NOTIFICATIONS, "channel" => channel.as_str(), "outcome" => label)
            .increment(1);
        match &outcome {
            Delivery::Failed(e) => {
                tracing::warn!(job = %c.job_id, channel = channel.as_str(), target = %c.n.target, error = %e, "notification failed for good")
            }
            Delivery::Retry(d, e) => {
                tracing::info!(job = %c.job_id, channel = channel.as_str(), target = %c.n.target, error = %e, retry_in = ?d, "notification not delivered; retrying")
            }
            Delivery::Delivered => {}
        }
        (c.n.id, outcome)
    }

    async fn deliver(
        &self,
        c: &ClaimedNotification,
        channel: Channel,
        job: Shown,
    ) -> Result<(), Attempt> {
        if channel == Channel::Email {
            return self.email(c, job).await;
        }
        crate::outbound::check(&self.settings.targets, &c.n.target)
            .map_err(|r| Attempt::Permanent(r.0))?;
        let body = self.body(c, &*job?)?;
        let mut req = self
            .http
            .post(&c.n.target)
            .header("content-type", "application/json")
            .header("tcc-event", &c.n.event);
        if let Some(corr) = body.1.as_deref() {
            req = req.header("correlation-id", corr);
        }
        if let Some(secret) = &self.settings.secret {
            req = req.header("tcc-signature", signature(secret, &body.0));
        }
        let mut resp =
            req.body(body.0)
                .send()
                .await
                .map_err(|e| match crate::outbound::refusal(&e) {
                    Some(why) => Attempt::Permanent(why),
                    None => Attempt::Again(describe(&e)),
                })?;
        let status = resp.status();
        // Read a little of the answer (bounded), for the error message and to let the
        // connection be reused.
        let mut answer = Vec::new();
        while answer.len() < MAX_ANSWER {
            match resp.chunk().await {
                Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
        Err(Attempt::Again(format!(
            "{} answered {status}{}",
            c.n.target,
            if said.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", said.trim())
            }
        )))
    }

    /// An email to the contact: subject the job id and correlation id; the text what a heuristic
    /// outcome means, every task with its status, link and last message, the job's URL, and how
    /// to continue or resolve it.
    async fn email(&self, c: &ClaimedNotification, job: Shown) -> Result<(), Attempt> {
        let Some(smtp) = &self.settings.smtp else {
            return Err(Attempt::Permanent(format!(
                "no email was sent to {}: no SMTP server is configured (TCC_SMTP_URL)",
                c.n.target
            )));
        };
        let to: Mailbox = c.n.target.parse().map_err(|e| {
            Attempt::Permanent(format!("{:?} is not an email address: {e}", c.n.target))
        })?;
        let record = job?;
        let job = &record.job;
        let base = &self.settings.base_url;
        let url = format!("{base}/jobs/{}", job.id);
        let mut text = format!(
            "Job {} (correlation id {}) ended {}: some of its participants confirmed and others could not, \
             so they disagree and the coordinator cannot settle it by itself; someone has to set them right by hand.\n\nTasks:\n",
            job.id,
            job.correlation_id,
            job.status().as_str().to_uppercase()
        );
        for t in &job.tasks {
            text.push_str(&format!(
                "- {}: {}, participant link {}, last message: {}\n",
                t.task_id,
                t.status,
                t.link.as_ref().map_or("none", |l| l.uri.as_str()),
                t.last_message.as_deref().unwrap_or("-")
            ));
        }
        text.push_str(&format!(
            "\nThe job: {url}\n\nOnce the participants agree again, record what was done:\n  \
             POST {url}/resolve with {{\"note\": \"what was done\"}}\n\
             If a participant is back and its reservation still holds, have its confirm retried:\n  \
             POST {url}/continue\n\nEvery unresolved heuristic job: {base}/heuristics\n"
        ));
        let message = Message::builder()
            .from(smtp.from.clone())
            .to(to)
            .subject(format!(
                "Heuristic outcome: job {} (correlation id {})",
                job.id, job.correlation_id
            ))
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| Attempt::Permanent(format!("the email could not be written: {e}")))?;
        match smtp.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(Attempt::Permanent(format!(
                "the SMTP server refused the email to {}: {e}",
                c.n.target
            ))),
            Err(e) => Err(Attempt::Again(format!("email to {}: {e}", c.n.target))),
        }
    }

    /// The body (`{"event", "job"}`) and the job's correlation id.
    fn body(
        &self,
        c: &ClaimedNotification,
        record: &store::JobRecord,
    ) -> Result<(Vec<u8>, Option<String>), Attempt> {
        /// Written straight to bytes: no `Value` tree of the job in between.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            event: &'a str,
            job: JobRepr<'a>,
        }
        let doc = Body {
            event: &c.n.event,
            job: JobRepr::new(&self.settings.base_url, record),
        };
        let bytes = serde_json::to_vec(&doc)
            .map_err(|e| Attempt::Permanent(format!("the body could not be written: {e}")))?;
        Ok((bytes, Some(record.job.correlation_id.clone())))
    }
}

/// A claimed notification's job, read with its batch's (or why it could not be).
type Shown = Result<Arc<store::JobRecord>, Attempt>;

enum Attempt {
    /// Worth another attempt (the receiver is down, slow, or answered other than 2xx).
    Again(String),
    /// No attempt can succeed.
    Permanent(String),
}

fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let url = e.url().map(|u| u.to_string()).unwrap_or_default();
    format!("{url}: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_from_a_second_and_stops_at_ten_minutes() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(30, 1.0), MAX_DELAY);
        assert_eq!(backoff(0, 1.0), Duration::from_secs(1));
    }
}
