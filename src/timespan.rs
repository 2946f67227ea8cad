//! Time spans in systemd's syntax (`systemd.time(7)`): `90`, `90s`, `500ms`,
//! `5min 20s`, `1h30m`, `infinity`. A bare number is seconds, as in systemd.

use std::time::Duration;

/// A parsed time span; `None` stands for `infinity`.
pub type Span = Option<Duration>;

/// Units systemd accepts, longest spelling first so that `ms` wins over `m`
/// and `min` over `m`.
const UNITS: &[(&str, f64)] = &[
    ("usec", 1e-6),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("msec", 1e-3),
    ("ms", 1e-3),
    ("seconds", 1.0),
    ("second", 1.0),
    ("sec", 1.0),
    ("s", 1.0),
    ("minutes", 60.0),
    ("minute", 60.0),
    ("min", 60.0),
    ("m", 60.0),
    ("hours", 3600.0),
    ("hour", 3600.0),
    ("hr", 3600.0),
    ("h", 3600.0),
    ("days", 86400.0),
    ("day", 86400.0),
    ("d", 86400.0),
    ("weeks", 604800.0),
    ("week", 604800.0),
    ("w", 604800.0),
];

/// Parses a systemd time span. Errors name what was wrong, for the usage line.
///
/// ```
/// use std::time::Duration;
/// use simpletcpunixrelay::timespan::parse;
///
/// assert_eq!(parse("5min 20s"), Ok(Some(Duration::from_secs(320))));
/// assert_eq!(parse("500ms"), Ok(Some(Duration::from_millis(500))));
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
    let mut rest = trimmed;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!(
                "'{text}' is not a time span (expected e.g. 90s, 500ms, 5min 20s, infinity)"
            ));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("'{}' is not a number", &rest[..number_len]))?;
        rest = rest[number_len..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let factor = if unit.is_empty() {
            1.0
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!("unknown time unit '{unit}' in '{text}' (use us, ms, s, min, h, d, w)")
                })?
        };
        total += number * factor;
        rest = rest[unit_len..].trim_start();
    }
    if !total.is_finite() || total > 1e12 {
        return Err(format!("time span '{text}' is too large"));
    }
    Ok(Some(Duration::from_secs_f64(total)))
}

/// Formats a span the way it was most likely written, for log lines.
pub fn format(span: Span) -> String {
    match span {
        None => "infinity".into(),
        Some(d) if d.subsec_nanos() == 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{}ms", d.as_millis()),
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

    #[test]
    fn rejects_garbage() {
        for bad in ["", "abc", "10x", "s", "-1s", "1..2s", "5 fortnights"] {
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
