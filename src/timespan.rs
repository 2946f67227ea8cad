//! Time spans exactly as systemd reads them (`parse_sec()`, `systemd.time(7)`):
//! `90`, `90s`, `500ms`, `5min 20s`, `1h30m`, `+5s`, `.5s`, `infinity`. A bare
//! number is seconds. The parser below follows systemd's `parse_time()` step
//! by step, because its language has corners a tidier grammar would not
//! reproduce: components begin where C's `strtoll` begins (it also skips
//! `\v` and `\f`, and takes a `+`), a dot needs a digit after it, fractions
//! of any length are truncated to microseconds, and every total of 2⁶⁴−1 µs
//! or more is refused. `systemd-analyze timespan` is the reference
//! (tests/properties.rs compares the two).

use std::time::Duration;

/// A parsed time span; `None` stands for `infinity`.
pub type Span = Option<Duration>;

const USEC_PER_SEC: u64 = 1_000_000;
/// systemd's `USEC_INFINITY`: no span may reach it.
const USEC_INFINITY: u64 = u64::MAX;

/// systemd's units, in microseconds (`extract_multiplier()`): no
/// nanoseconds, a month of 30.44 days and a year of 365.25 days. The longest
/// spelling that begins the text wins, as in systemd's ordered table.
const UNITS: &[(&str, u64)] = &[
    ("seconds", USEC_PER_SEC),
    ("second", USEC_PER_SEC),
    ("sec", USEC_PER_SEC),
    ("s", USEC_PER_SEC),
    ("minutes", 60 * USEC_PER_SEC),
    ("minute", 60 * USEC_PER_SEC),
    ("min", 60 * USEC_PER_SEC),
    ("months", 2_629_800 * USEC_PER_SEC),
    ("month", 2_629_800 * USEC_PER_SEC),
    ("M", 2_629_800 * USEC_PER_SEC),
    ("msec", 1_000),
    ("ms", 1_000),
    ("m", 60 * USEC_PER_SEC),
    ("hours", 3600 * USEC_PER_SEC),
    ("hour", 3600 * USEC_PER_SEC),
    ("hr", 3600 * USEC_PER_SEC),
    ("h", 3600 * USEC_PER_SEC),
    ("days", 86_400 * USEC_PER_SEC),
    ("day", 86_400 * USEC_PER_SEC),
    ("d", 86_400 * USEC_PER_SEC),
    ("weeks", 604_800 * USEC_PER_SEC),
    ("week", 604_800 * USEC_PER_SEC),
    ("w", 604_800 * USEC_PER_SEC),
    ("years", 31_557_600 * USEC_PER_SEC),
    ("year", 31_557_600 * USEC_PER_SEC),
    ("y", 31_557_600 * USEC_PER_SEC),
    ("usec", 1),
    ("us", 1),
    ("\u{3bc}s", 1), // GREEK SMALL LETTER MU
    ("\u{b5}s", 1),  // MICRO SIGN
];

/// Why systemd refuses a span: the two errors its parser returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `EINVAL`: not the language of time spans.
    Invalid,
    /// `ERANGE`: negative, or 2⁶⁴−1 µs or more.
    OutOfRange,
}

/// systemd's `WHITESPACE`, which it skips between components.
fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// C's `isspace` in the C locale, which `strtoll` skips: `WHITESPACE` and
/// also `\v` and `\f`.
fn is_c_space(byte: u8) -> bool {
    is_whitespace(byte) || matches!(byte, 0x0b | 0x0c)
}

fn skip(text: &[u8], mut at: usize, class: impl Fn(u8) -> bool) -> usize {
    while text.get(at).copied().is_some_and(&class) {
        at += 1;
    }
    at
}

/// C's `strtoll(text + at, &end, 10)`: the value and where it ended; the end
/// is `at` itself when there are no digits. Overflow is `ERANGE`.
fn strtoll(text: &[u8], at: usize) -> Result<(i128, usize), Refusal> {
    let mut p = skip(text, at, is_c_space);
    let negative = match text.get(p) {
        Some(b'-') => {
            p += 1;
            true
        }
        Some(b'+') => {
            p += 1;
            false
        }
        _ => false,
    };
    let digits = skip(text, p, |b| b.is_ascii_digit());
    if digits == p {
        return Ok((0, at));
    }
    let mut value: i128 = 0;
    for &digit in &text[p..digits] {
        value = value * 10 + i128::from(digit - b'0');
        if value > i128::from(i64::MAX) + 1 {
            return Err(Refusal::OutOfRange);
        }
    }
    let value = if negative { -value } else { value };
    if value > i128::from(i64::MAX) {
        return Err(Refusal::OutOfRange);
    }
    Ok((value, digits))
}

/// The unit that begins `text[at..]`, and where it ends; `None` if none does.
fn unit(text: &[u8], at: usize) -> Option<(u64, usize)> {
    UNITS
        .iter()
        .filter(|(name, _)| text[at..].starts_with(name.as_bytes()))
        .max_by_key(|(name, _)| name.len())
        .map(|(name, usec)| (*usec, at + name.len()))
}

/// Parses a span as systemd's `parse_sec()` does, into microseconds
/// (`None`: `infinity`).
///
/// ```
/// use simpletcpunixrelay::timespan::{parse_usec, Refusal};
///
/// assert_eq!(parse_usec("5min 20s"), Ok(Some(320_000_000)));
/// assert_eq!(parse_usec("+1.9999999s"), Ok(Some(1_999_999)));
/// assert_eq!(parse_usec(" infinity "), Ok(None));
/// assert_eq!(parse_usec("5."), Err(Refusal::Invalid));
/// assert_eq!(parse_usec("5ns"), Err(Refusal::Invalid));
/// assert_eq!(parse_usec("-0"), Err(Refusal::OutOfRange));
/// assert_eq!(parse_usec("18446744073709551615us"), Err(Refusal::OutOfRange));
/// ```
pub fn parse_usec(text: &str) -> Result<Option<u64>, Refusal> {
    let text = text.as_bytes();
    let mut p = skip(text, 0, is_whitespace);
    if text[p..].starts_with(b"infinity") {
        return if skip(text, p + 8, is_whitespace) == text.len() {
            Ok(None)
        } else {
            Err(Refusal::Invalid)
        };
    }
    let mut usec: u64 = 0;
    let mut something = false;
    loop {
        p = skip(text, p, is_whitespace);
        if p == text.len() {
            return if something {
                Ok(Some(usec))
            } else {
                Err(Refusal::Invalid)
            };
        }
        // systemd refuses "-0" here, although strtoll would read it.
        if text[p] == b'-' {
            return Err(Refusal::OutOfRange);
        }
        let (whole, end) = strtoll(text, p)?;
        let whole = u64::try_from(whole).map_err(|_| Refusal::OutOfRange)?;
        let dot = text.get(end) == Some(&b'.');
        if dot {
            p = skip(text, end + 1, |b| b.is_ascii_digit());
        } else if end == p {
            return Err(Refusal::Invalid);
        } else {
            p = end;
        }
        let unit_at = skip(text, p, is_whitespace);
        let (multiplier, after) = unit(text, unit_at).unwrap_or((USEC_PER_SEC, unit_at));
        // "12.34.56" is refused, "12.34 .56" and "12.34s.56" are not.
        if after == p && p < text.len() {
            return Err(Refusal::Invalid);
        }
        p = after;
        if whole >= USEC_INFINITY / multiplier {
            return Err(Refusal::OutOfRange);
        }
        let value = whole * multiplier;
        if value >= USEC_INFINITY - usec {
            return Err(Refusal::OutOfRange);
        }
        usec += value;
        something = true;
        if dot {
            // Each digit adds its share of the unit, in whole microseconds:
            // digits past the unit's precision add nothing.
            let mut share = multiplier / 10;
            let mut at = end + 1;
            while let Some(digit) = text.get(at).filter(|b| b.is_ascii_digit()) {
                let value = u64::from(digit - b'0') * share;
                if value >= USEC_INFINITY - usec {
                    return Err(Refusal::OutOfRange);
                }
                usec += value;
                share /= 10;
                at += 1;
            }
            // "3.", "3.s", "3. 1" and "3.+1" are refused.
            if at == end + 1 {
                return Err(Refusal::Invalid);
            }
        }
    }
}

/// Parses a systemd time span, with a reason fit for a usage error when it
/// is refused.
///
/// ```
/// use std::time::Duration;
/// use simpletcpunixrelay::timespan::parse;
///
/// assert_eq!(parse("5min 20s"), Ok(Some(Duration::from_secs(320))));
/// assert_eq!(parse("500ms"), Ok(Some(Duration::from_millis(500))));
/// assert_eq!(parse("1M"), Ok(Some(Duration::from_secs(2_629_800))));
/// assert_eq!(parse("infinity"), Ok(None));
/// assert!(parse("soon").is_err());
/// ```
pub fn parse(text: &str) -> Result<Span, String> {
    match parse_usec(text) {
        Ok(usec) => Ok(usec.map(Duration::from_micros)),
        Err(Refusal::Invalid) if text.is_empty() => Err("empty time span".into()),
        Err(Refusal::Invalid) => Err(format!(
            "{} is not a time span (expected e.g. 90s, 500ms, 5min 20s, infinity; units: us, ms, s, min, h, d, w, M, y)",
            crate::cli::quote(text)
        )),
        Err(Refusal::OutOfRange) => Err(format!(
            "{} is out of range (a time span is not negative and less than 2^64-1 us, about 584942 years)",
            crate::cli::quote(text)
        )),
    }
}

/// Formats a span the way it was most likely written, for log lines.
pub fn format(span: Span) -> String {
    match span {
        None => "infinity".into(),
        Some(d) if d.subsec_nanos() == 0 => format!("{}s", d.as_secs()),
        Some(d) if d.subsec_nanos() % 1_000_000 == 0 => format!("{}ms", d.as_millis()),
        Some(d) if d.subsec_nanos() % 1_000 == 0 => format!("{}us", d.as_micros()),
        Some(d) => format!("{}ns", d.as_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Result<Span, String> {
        Ok(Some(Duration::from_millis(n)))
    }

    #[test]
    fn accepts_systemd_forms() {
        assert_eq!(parse("90"), ms(90_000));
        assert_eq!(parse("90s"), ms(90_000));
        assert_eq!(parse("500ms"), ms(500));
        assert_eq!(parse("5min 20s"), ms(320_000));
        assert_eq!(parse("1h30m"), ms(5_400_000));
        assert_eq!(parse("1.5s"), ms(1500));
        assert_eq!(parse("2 d"), ms(172_800_000));
        assert_eq!(parse("0"), ms(0));
        assert_eq!(parse("infinity"), Ok(None));
    }

    /// systemd.time(7)'s units with their meanings.
    #[test]
    fn every_systemd_unit() {
        let ns = |n: u64| Ok(Some(Duration::from_nanos(n)));
        let s = |n: u64| Ok(Some(Duration::from_secs(n)));
        assert_eq!(parse("7us"), ns(7_000));
        assert_eq!(parse("7usec"), ns(7_000));
        assert_eq!(parse("7\u{3bc}s"), ns(7_000));
        assert_eq!(parse("7\u{b5}s"), ns(7_000));
        assert_eq!(parse("7msec"), ns(7_000_000));
        for unit in ["s", "sec", "second", "seconds"] {
            assert_eq!(parse(&format!("7{unit}")), s(7), "{unit}");
        }
        for unit in ["m", "min", "minute", "minutes"] {
            assert_eq!(parse(&format!("2{unit}")), s(120), "{unit}");
        }
        for unit in ["h", "hr", "hour", "hours"] {
            assert_eq!(parse(&format!("2{unit}")), s(7200), "{unit}");
        }
        for unit in ["d", "day", "days"] {
            assert_eq!(parse(&format!("1{unit}")), s(86_400), "{unit}");
        }
        for unit in ["w", "week", "weeks"] {
            assert_eq!(parse(&format!("1{unit}")), s(604_800), "{unit}");
        }
        // A month is 30.44 days, a year 365.25 days; M is not m.
        for unit in ["M", "month", "months"] {
            assert_eq!(parse(&format!("1{unit}")), s(2_629_800), "{unit}");
        }
        for unit in ["y", "year", "years"] {
            assert_eq!(parse(&format!("1{unit}")), s(31_557_600), "{unit}");
        }
        assert_eq!(
            parse("1y 2M 3w"),
            s(31_557_600 + 2 * 2_629_800 + 3 * 604_800)
        );
        assert_eq!(parse("5 min 20 s"), s(320));
        assert_eq!(parse("1.5h"), s(5400));
        assert_eq!(parse(".5s"), ns(500_000_000));
        // Truncated to microseconds, as systemd does.
        assert_eq!(parse("0.000000001s"), ns(0));
        assert_eq!(parse("1.9999999s"), ns(1_999_999_000));
        assert_eq!(parse("  2s  "), s(2));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "abc",
            "10x",
            "s",
            "-1s",
            "1..2s",
            "5ns",
            "5nsec",
            "5.",
            "3.s",
            "1. 5",
            "-0",
            "5s\u{b}",
            "5\u{a0}s",
            "\u{3000}5s",
            "5 fortnights",
            "1 fortnight",
            "1S",
            "99999999999999999999999999y",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    /// Corners of systemd's parser, each checked with `systemd-analyze timespan`.
    #[test]
    fn systemd_corners() {
        let us = |n: u64| Ok(Some(n));
        assert_eq!(parse_usec("+5s"), us(5_000_000));
        assert_eq!(parse_usec("5 +3"), us(8_000_000));
        assert_eq!(parse_usec("5s+3"), us(8_000_000));
        assert_eq!(parse_usec("5+3"), Err(Refusal::Invalid));
        assert_eq!(parse_usec("\u{b}5s"), us(5_000_000));
        assert_eq!(parse_usec("1h\u{c}2"), us(3_602_000_000));
        assert_eq!(parse_usec("\u{b}-0"), us(0));
        assert_eq!(parse_usec("5 .5"), us(5_500_000));
        assert_eq!(parse_usec("5s.5"), us(5_500_000));
        assert_eq!(parse_usec("12.34.56"), Err(Refusal::Invalid));
        assert_eq!(parse_usec("sec5"), Err(Refusal::Invalid));
        assert_eq!(parse_usec("5sec5"), us(10_000_000));
        assert_eq!(
            parse_usec("0.00000000000000000000000001s"),
            us(0),
            "fractions of any length"
        );
        assert_eq!(
            parse_usec("18446744073708s"),
            us(18_446_744_073_708_000_000)
        );
        assert_eq!(parse_usec("18446744073709s"), Err(Refusal::OutOfRange));
        assert_eq!(
            parse_usec("9223372036854775808us"),
            Err(Refusal::OutOfRange),
            "beyond strtoll"
        );
        assert_eq!(
            parse_usec("9000000000000000000us 9000000000000000000us"),
            us(18_000_000_000_000_000_000)
        );
        assert_eq!(
            parse_usec("9223372036854775807us 9223372036854775808us"),
            Err(Refusal::OutOfRange)
        );
        assert_eq!(
            parse_usec("9223372036854775807us 9223372036854775807us"),
            us(u64::MAX - 1),
            "the largest span"
        );
        assert_eq!(
            parse_usec("9223372036854775807us 9223372036854775807us 1us"),
            Err(Refusal::OutOfRange),
            "2^64-1 is infinity's"
        );
        assert_eq!(parse_usec(" \tinfinity\r\n"), Ok(None));
        assert_eq!(parse_usec("\u{b}infinity"), Err(Refusal::Invalid));
        assert_eq!(parse_usec("infinity5"), Err(Refusal::Invalid));
        assert_eq!(parse_usec("010"), us(10_000_000));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format(None), "infinity");
        assert_eq!(format(Some(Duration::from_secs(30))), "30s");
        assert_eq!(format(Some(Duration::from_millis(250))), "250ms");
    }
}
