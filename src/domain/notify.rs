//! Who is told when a job ends (docs/api.md, "Callbacks and calling for help"): the job's callbacks, and on a heuristic outcome the
//! contact's webhook and email and the operators' webhook (`TCC_HEURISTIC_WEBHOOK`).

use super::request::JobFields;
use super::status::JobStatus;

enum_with_all! {
    /// How a notification travels.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Channel {
        /// `jobSuccessURL` / `jobFailedURL`.
        Callback,
        /// The contact's webhook and the operators' one.
        Webhook,
        Email,
    }
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Callback => "callback",
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A notification to deliver, as the change that causes it writes it to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub channel: Channel,
    /// A URL, or an email address.
    pub target: String,
    /// `job.completed`, `job.failed`, `job.canceled`, `job.heuristic`.
    pub event: String,
}

/// The notifications a job that has just ended in `status` calls for: `jobSuccessURL` on
/// `completed`; `jobFailedURL` on `failed`, `canceled` and `heuristic`; and on `heuristic` the
/// contact's webhook and email and the operators' webhook. None for a status that is not an end.
pub fn on_end(
    fields: &JobFields,
    status: JobStatus,
    operators_webhook: Option<&str>,
) -> Vec<NewNotification> {
    if !status.is_terminal() {
        return Vec::new();
    }
    let event = format!("job.{}", status.as_str());
    let mut out = Vec::new();
    let mut add = |channel: Channel, target: Option<&str>| {
        if let Some(t) = target {
            out.push(NewNotification {
                channel,
                target: t.to_string(),
                event: event.clone(),
            });
        }
    };
    match status {
        JobStatus::Completed => add(Channel::Callback, fields.job_success_url.as_deref()),
        _ => add(Channel::Callback, fields.job_failed_url.as_deref()),
    }
    if status == JobStatus::Heuristic {
        let contact = fields.contact.as_ref();
        add(Channel::Webhook, contact.and_then(|c| c.webhook.as_deref()));
        add(Channel::Webhook, operators_webhook);
        add(Channel::Email, contact.and_then(|c| c.email.as_deref()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::{Limits, parse_job};

    #[test]
    fn each_end_calls_for_its_receivers() {
        let doc = serde_json::json!({
            "jobSuccessURL": "http://r/ok", "jobFailedURL": "http://r/bad",
            "contact": {"email": "ops@example.org", "webhook": "http://r/pager"},
            "tasks": [{"taskURL": "http://p/a"}]
        });
        let new = parse_job(&doc, Limits { max_tasks: 10 }, chrono::Utc::now()).expect("valid");
        let of = |s: JobStatus, ops: Option<&str>| -> Vec<(Channel, String, String)> {
            on_end(&new.fields, s, ops)
                .into_iter()
                .map(|n| (n.channel, n.target, n.event))
                .collect()
        };
        let t = |c, target: &str, event: &str| (c, target.to_string(), event.to_string());
        assert_eq!(
            of(JobStatus::Completed, Some("http://ops")),
            vec![t(Channel::Callback, "http://r/ok", "job.completed")]
        );
        assert_eq!(
            of(JobStatus::Canceled, None),
            vec![t(Channel::Callback, "http://r/bad", "job.canceled")]
        );
        assert_eq!(
            of(JobStatus::Heuristic, Some("http://ops")),
            vec![
                t(Channel::Callback, "http://r/bad", "job.heuristic"),
                t(Channel::Webhook, "http://r/pager", "job.heuristic"),
                t(Channel::Webhook, "http://ops", "job.heuristic"),
                t(Channel::Email, "ops@example.org", "job.heuristic"),
            ]
        );
        assert!(of(JobStatus::Confirming, Some("http://ops")).is_empty());
    }
}
