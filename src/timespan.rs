//! Time spans in systemd's syntax (`systemd.time(7)`): `90`, `90s`, `500ms`,
//! `5min 20s`, `1h30m`, `infinity`. A bare number is seconds, as in systemd.

use std::time::Duration;

/// A parsed time span; `None` stands for `infinity`.
pub type Span = Option<Duration>;

const NS_PER_SEC: u128 = 1_000_000_000;

/// Units of `systemd.time(7)`, in nanoseconds. A month is 30.44 days and a
/// year 365.25 days, as there. Longest spelling first, so that `ms` wins
/// over `m` and `min` over `m`; `M` (month) and `m` (minute) differ in case.
const UNITS: &[(&str, u128)] = &[
    ("nsec", 1),
    ("ns", 1),
    ("usec", 1_000),
    ("us", 1_000),
    ("\u{3bc}s", 1_000), // GREEK SMALL LETTER MU
    ("\u{b5}s", 1_000),  // MICRO SIGN
    ("msec", 1_000_000),
    ("ms", 1_000_000),
    ("seconds", NS_PER_SEC),
    ("second", NS_PER_SEC),
    ("sec", NS_PER_SEC),
    ("s", NS_PER_SEC),
    ("minutes", 60 * NS_PER_SEC),
    ("minute", 60 * NS_PER_SEC),
    ("min", 60 * NS_PER_SEC),
    ("months", 2_629_800 * NS_PER_SEC),
    ("month", 2_629_800 * NS_PER_SEC),
    ("M", 2_629_800 * NS_PER_SEC),
    ("m", 60 * NS_PER_SEC),
    ("hours", 3600 * NS_PER_SEC),
    ("hour", 3600 * NS_PER_SEC),
    ("hr", 3600 * NS_PER_SEC),
    ("h", 3600 * NS_PER_SEC),
    ("days", 86_400 * NS_PER_SEC),
    ("day", 86_400 * NS_PER_SEC),
    ("d", 86_400 * NS_PER_SEC),
    ("weeks", 604_800 * NS_PER_SEC),
    ("week", 604_800 * NS_PER_SEC),
    ("w", 604_800 * NS_PER_SEC),
    ("years", 31_557_600 * NS_PER_SEC),
    ("year", 31_557_600 * NS_PER_SEC),
    ("y", 31_557_600 * NS_PER_SEC),
];

/// Parses a systemd time span: numbers (decimals allowed) each followed by
/// a unit (none: seconds), separated by optional spaces, or `infinity`.
/// Errors name what was wrong, for the usage line.
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
    let trimmed = text.trim();
    if trimmed == "infinity" {
        return Ok(None);
    }
    if trimmed.is_empty() {
        return Err("empty time span".into());
    }
    let not_a_span =
        || format!("'{text}' is not a time span (expected e.g. 90s, 500ms, 5min 20s, infinity)");
    let mut rest = trimmed;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(
                after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len()),
            ),
            None => ("", after),
        };
        if (whole.is_empty() && fraction.is_empty()) || after.starts_with('.') {
            return Err(not_a_span());
        }
        rest = after.trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let factor = if unit.is_empty() {
            NS_PER_SEC
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!(
                        "unknown time unit '{unit}' in '{text}' (use ns, us, ms, s, min, h, d, w, M, y)"
                    )
                })?
        };
        let too_large = || format!("time span '{text}' is too large");
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        // Digits beyond nanoseconds cannot matter.
        let fraction = &fraction[..fraction.len().min(30)];
        let fraction_value: u128 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| too_large())?
        };
        let scale = 10u128.pow(fraction.len() as u32);
        total = whole
            .checked_mul(factor)
            .and_then(|w| w.checked_add(fraction_value.checked_mul(factor)? / scale))
            .and_then(|v| total.checked_add(v))
            .ok_or_else(too_large)?;
        rest = rest[unit_len..].trim_start();
    }
    let seconds = u64::try_from(total / NS_PER_SEC)
        .map_err(|_| format!("time span '{text}' is too large"))?;
    Ok(Some(Duration::new(seconds, (total % NS_PER_SEC) as u32)))
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
        assert_eq!(parse("7ns"), ns(7));
        assert_eq!(parse("7nsec"), ns(7));
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
        assert_eq!(parse("0.000000001s"), ns(1));
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
            "+1s",
            "1..2s",
            "5 fortnights",
            "1 fortnight",
            "1S",
            "99999999999999999999999999y",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format(None), "infinity");
        assert_eq!(format(Some(Duration::from_secs(30))), "30s");
        assert_eq!(format(Some(Duration::from_millis(250))), "250ms");
    }
}
