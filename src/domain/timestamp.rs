//! Timestamps written as text without `fmt`: the API's format (`rfc3339`, milliseconds) and the
//! one serde writes for the store's JSON (chrono's own: RFC 3339 in UTC with `Z`, and 3, 6 or 9
//! fractional digits, as many as the value needs, none for a whole second).
//!
//! chrono writes both through `fmt`, and serde_json takes its `collect_str` a character at a
//! time, each through its escaping: every job writes a dozen timestamps into its row and event
//! log. The text is the same either way (the tests compare them); a year outside 0–9999 or a
//! leap second, which chrono writes its own way, is left to chrono.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

/// Longest text of the fast path: `9999-12-31T23:59:59.123456789Z`.
const MAX: usize = 30;

/// How many fractional digits.
#[derive(Clone, Copy)]
enum Fraction {
    Millis,
    Auto,
}

/// `value` as `n` decimal digits at `buf[at..]`; where the next character goes.
fn digits(buf: &mut [u8; MAX], at: usize, value: u32, n: usize) -> usize {
    let mut v = value;
    for slot in buf[at..at + n].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    at + n
}

/// `t` as text into `buf`; `None` where chrono's own writing is needed.
fn write(t: &DateTime<Utc>, fraction: Fraction, buf: &mut [u8; MAX]) -> Option<usize> {
    let n = t.naive_utc();
    let year = n.year();
    let nano = n.nanosecond();
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        return None;
    }
    let mut at = digits(buf, 0, year.unsigned_abs(), 4);
    for (sep, value) in [
        (b'-', n.month()),
        (b'-', n.day()),
        (b'T', n.hour()),
        (b':', n.minute()),
        (b':', n.second()),
    ] {
        buf[at] = sep;
        at = digits(buf, at + 1, value, 2);
    }
    let (value, width) = match fraction {
        Fraction::Millis => (nano / 1_000_000, 3),
        Fraction::Auto if nano == 0 => (0, 0),
        Fraction::Auto if nano.is_multiple_of(1_000_000) => (nano / 1_000_000, 3),
        Fraction::Auto if nano.is_multiple_of(1_000) => (nano / 1_000, 6),
        Fraction::Auto => (nano, 9),
    };
    if width > 0 {
        buf[at] = b'.';
        at = digits(buf, at + 1, value, width);
    }
    buf[at] = b'Z';
    Some(at + 1)
}

fn text(buf: &[u8]) -> &str {
    // Only ASCII digits and separators were written.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// RFC 3339 in UTC with milliseconds, the one timestamp format of the API.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    let mut buf = [0u8; MAX];
    match write(&t, Fraction::Millis, &mut buf) {
        Some(len) => text(&buf[..len]).to_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

/// For `#[serde(serialize_with)]`: `t` as chrono's `Serialize` writes it.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX];
    match write(t, Fraction::Auto, &mut buf) {
        Some(len) => s.serialize_str(text(&buf[..len])),
        None => serde::Serialize::serialize(t, s),
    }
}

/// As `serialize`, for an optional timestamp.
pub fn serialize_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
    use proptest::prelude::*;

    fn serde_text(t: &DateTime<Utc>) -> String {
        let mut out = Vec::new();
        super::serialize(t, &mut serde_json::Serializer::new(&mut out)).expect("serialized");
        String::from_utf8(out).expect("utf-8")
    }

    fn check(t: DateTime<Utc>) {
        assert_eq!(
            serde_text(&t),
            serde_json::to_string(&t).expect("chrono's"),
            "{t:?}"
        );
        assert_eq!(
            super::rfc3339(t),
            t.to_rfc3339_opts(SecondsFormat::Millis, true),
            "{t:?}"
        );
    }

    #[test]
    fn every_fraction_width_and_the_edges_read_as_chrono_writes_them() {
        let base = Utc.with_ymd_and_hms(2026, 12, 5, 9, 4, 7).unwrap();
        for nanos in [
            0,
            1,
            999,
            1_000,
            120_000,
            999_999,
            1_000_000,
            5_000_000,
            999_000_000,
            123_456_789,
            100_000_001,
        ] {
            check(base + chrono::Duration::nanoseconds(nanos));
        }
        check(Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap());
        check(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap());
        // Left to chrono: years outside 0–9999 and a leap second.
        check(Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap());
        check(Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap());
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|n| n.and_utc())
            .expect("a leap second");
        check(leap);
    }

    #[test]
    fn an_optional_timestamp_is_null_or_the_same_text() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let mut out = Vec::new();
        super::serialize_opt(&None, &mut serde_json::Serializer::new(&mut out)).expect("none");
        assert_eq!(out, b"null");
        let mut out = Vec::new();
        super::serialize_opt(&Some(t), &mut serde_json::Serializer::new(&mut out)).expect("some");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "\"2026-01-02T03:04:05Z\""
        );
    }

    proptest! {
        #[test]
        fn any_timestamp_reads_as_chrono_writes_it(
            secs in -70_000_000_000i64..260_000_000_000i64,
            nanos in prop_oneof![
                Just(0u32),
                (0u32..1000).prop_map(|m| m * 1_000_000),
                (0u32..1_000_000).prop_map(|u| u * 1_000),
                0u32..1_000_000_000,
            ],
        ) {
            let t = DateTime::from_timestamp(secs, nanos).expect("in range");
            check(t);
        }
    }
}
