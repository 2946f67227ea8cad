//! One event per line on standard error. Timestamps normally; syslog `<N>`
//! priority prefixes instead when standard error is the journal
//! (`JOURNAL_STREAM` names the same device and inode), so journald files each
//! line at the right priority. `--log-time no` leaves the timestamp out for
//! loggers that stamp each line themselves (s6-log, svlogd, multilog).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warning = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JOURNAL: AtomicBool = AtomicBool::new(false);
static TIMESTAMPS: AtomicBool = AtomicBool::new(true);

/// Sets the verbosity and detects whether standard error is the journal.
pub fn init(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    JOURNAL.store(stderr_is_journal(), Ordering::Relaxed);
}

/// Says whether standard error is the journal, for a process that cannot
/// tell from its environment (the resolver helper runs with none).
pub fn set_journal(on: bool) {
    JOURNAL.store(on, Ordering::Relaxed);
}

/// Whether standard error is the journal (lines carry `<N>` prefixes).
pub fn to_journal() -> bool {
    JOURNAL.load(Ordering::Relaxed)
}

/// Whether lines outside the journal start with a timestamp.
pub fn timestamps() -> bool {
    TIMESTAMPS.load(Ordering::Relaxed)
}

/// Whether lines outside the journal start with a timestamp (`--log-time`).
pub fn set_timestamps(on: bool) {
    TIMESTAMPS.store(on, Ordering::Relaxed);
}

/// A boolean as systemd reads one (`parse_boolean`): `yes`, `y`, `true`,
/// `t`, `on`, `1` or `no`, `n`, `false`, `f`, `off`, `0`, in any case.
pub fn parse_boolean(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(format!("'{text}' is not a boolean (yes or no)")),
    }
}

/// Whether messages at `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Prints one line at `level`. Use the macros instead.
pub fn write(level: Level, always: bool, message: std::fmt::Arguments<'_>) {
    if !always && !enabled(level) {
        return;
    }
    let tag = match level {
        Level::Error => "error: ",
        Level::Warning => "warning: ",
        _ => "",
    };
    emit(level, tag, message);
}

/// Prints the line that says why the relay exits with a failure status
/// (`simpletcpunixrelay: usage error: …`), at error priority in the journal.
/// On a terminal it carries no timestamp, as systemd's own tools print such
/// lines.
pub fn fatal(message: std::fmt::Arguments<'_>) {
    use std::io::IsTerminal;
    if !JOURNAL.load(Ordering::Relaxed) && std::io::stderr().is_terminal() {
        let _ = std::io::stderr()
            .lock()
            .write_all(format!("{message}\n").as_bytes());
        return;
    }
    emit(Level::Error, "", message);
}

fn emit(level: Level, tag: &str, message: std::fmt::Arguments<'_>) {
    let line = if JOURNAL.load(Ordering::Relaxed) {
        let priority = match level {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
            Level::Debug => 7,
        };
        format!("<{priority}>{tag}{message}\n")
    } else if TIMESTAMPS.load(Ordering::Relaxed) {
        format!("{} {tag}{message}\n", timestamp())
    } else {
        format!("{tag}{message}\n")
    };
    // One write per line so that concurrent lines never interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs an error (always shown, also with `-q`).
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, false, format_args!($($arg)*)) };
}
/// Logs a warning (hidden by `-q`).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warning, false, format_args!($($arg)*)) };
}
/// Logs a lifecycle event: startup, readiness, shutdown (hidden by `-q`).
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, false, format_args!($($arg)*)) };
}
/// Logs per-connection detail (shown with `-v`).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, false, format_args!($($arg)*)) };
}

/// Lets a repeated warning through at most once per interval, counting the
/// ones held back, so that a fault that fails every call (EMFILE at each
/// accept) is reported without flooding the log.
pub struct Throttle {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    /// A throttle letting one report through per `interval`.
    pub const fn new(interval: std::time::Duration) -> Throttle {
        Throttle {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` if a report may be made now, `n` being how many were held
    /// back since the last one; `None` to hold this one back.
    pub fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.interval) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.held_back))
    }
}

/// ` (N more since the last report)`, or nothing.
pub fn held_back(count: u64) -> String {
    if count == 0 {
        String::new()
    } else {
        format!(" ({count} more since the last report)")
    }
}

fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    stat.st_dev == dev && stat.st_ino == ino
}

/// The UTC calendar date `(year, month, day)` of a day count since
/// 1970-01-01 (Howard Hinnant's civil-from-days), without a date crate.
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// UTC time as `2026-11-21T05:40:01.123Z`.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_date((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_date(0), (1970, 1, 1));
        assert_eq!(super::civil_date(11_016), (2000, 2, 29));
        assert_eq!(super::civil_date(20_778), (2026, 11, 21));
    }

    #[test]
    fn booleans_as_systemd_reads_them() {
        for yes in ["yes", "YES", "y", "true", "t", "on", "1"] {
            assert_eq!(super::parse_boolean(yes), Ok(true), "{yes}");
        }
        for no in ["no", "No", "n", "false", "f", "off", "0"] {
            assert_eq!(super::parse_boolean(no), Ok(false), "{no}");
        }
        for bad in ["", "2", "yess", " yes", "nope"] {
            assert!(super::parse_boolean(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
