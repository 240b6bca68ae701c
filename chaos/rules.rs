//! The rules every correct participant keeps, as the test doubles keep them: the chaos suite's
//! participant and the API tests' (which also includes this file). What a confirm or cancel of a
//! reservation answers, and when a Try's `tcc-deadline` has passed.

use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResState {
    Reserved,
    Confirmed,
    Canceled,
}

/// A confirm (`PUT`) or a cancel (`DELETE`) of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Confirm,
    Cancel,
}

/// The answer to `op` on a reservation in `state` that lapses at `expires`; the state moves on
/// where the answer says so. A repeat answers as the first did (204), a confirm after a cancel
/// or a lapse 404, a cancel after a confirm 409.
pub fn settle(
    op: Settle,
    state: &mut ResState,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StatusCode {
    match (op, *state) {
        (Settle::Confirm, ResState::Confirmed) => StatusCode::NO_CONTENT,
        (Settle::Confirm, ResState::Canceled) => StatusCode::NOT_FOUND,
        (_, ResState::Reserved) if expires <= now => StatusCode::NOT_FOUND,
        (Settle::Confirm, ResState::Reserved) => {
            *state = ResState::Confirmed;
            StatusCode::NO_CONTENT
        }
        (Settle::Cancel, ResState::Confirmed) => StatusCode::CONFLICT,
        (Settle::Cancel, ResState::Canceled) => StatusCode::NO_CONTENT,
        (Settle::Cancel, ResState::Reserved) => {
            *state = ResState::Canceled;
            StatusCode::NO_CONTENT
        }
    }
}

/// Whether a Try's `tcc-deadline` has passed: the coordinator no longer acts on the answer. A
/// header that is absent or not an RFC 3339 time sets no deadline.
pub fn past_deadline(headers: &HeaderMap, now: DateTime<Utc>) -> bool {
    headers
        .get("tcc-deadline")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| DateTime::parse_from_rfc3339(d.trim()).ok())
        .is_some_and(|d| d <= now)
}
