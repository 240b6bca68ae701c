//! Pages of a list: the `limit` parameter and the opaque keyset cursor of `next` links.

use chrono::Utc;

use super::error::ApiError;

/// A page size: 1 to 500.
pub(super) fn parse_limit(v: &str) -> Result<i64, ApiError> {
    v.parse::<i64>()
        .ok()
        .filter(|n| (1..=500).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request("query parameter limit: must be a number from 1 to 500")
        })
}

/// A keyset cursor this server gave (`encode_cursor`).
pub(super) fn parse_cursor(v: &str) -> Result<(chrono::DateTime<Utc>, String), ApiError> {
    decode_cursor(v).ok_or_else(|| {
        ApiError::bad_request("query parameter cursor: is not a cursor this server gave")
    })
}

pub(super) fn encode_cursor(at: chrono::DateTime<Utc>, id: &str) -> String {
    let raw = format!("{}|{id}", at.timestamp_micros());
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(s: &str) -> Option<(chrono::DateTime<Utc>, String)> {
    if !s.len().is_multiple_of(2) || s.len() > 600 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let (micros, id) = raw.split_once('|')?;
    let at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    // Only what this server could have given: a job's creation time (years PostgreSQL and
    // RFC 3339 both hold) and a job id. Anything else is forged, and must not reach the query.
    let id = crate::domain::JobId::parse(id).ok()?;
    (1..=9999)
        .contains(&chrono::Datelike::year(&at))
        .then(|| (at, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default();
        let c = encode_cursor(at, "0193-abc");
        assert_eq!(decode_cursor(&c), Some((at, "0193-abc".to_string())));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("abc"), None);
        // Well-formed, but beyond what PostgreSQL holds, or not a job id: forged.
        let forged = [
            format!("{}|0193-abc", 3_000_000_000_000_000_000i64),
            format!("{}|0193-abc", -8_000_000_000_000_000_000i64),
            format!("{}|a\0b", at.timestamp_micros()),
        ];
        for raw in forged {
            let forged: String = raw.bytes().map(|b| format!("{b:02x}")).collect();
            assert_eq!(decode_cursor(&forged), None, "{raw}");
        }
    }
}
