//! Telling systemd how the relay is doing (`sd_notify(3)`): `READY=1` once
//! every listener accepts and the sandbox is in place, `STATUS=` with the
//! connection counts, `STOPPING=1`, and watchdog keep-alives. Without
//! `NOTIFY_SOCKET` every call does nothing.

use std::sync::OnceLock;
use std::time::Duration;

use async_io::Timer;
use sd_notify::NotifyState;

use crate::server::Stats;

/// How often `STATUS=` may change (systemd shows it in `systemctl status`).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("NOTIFY_SOCKET").is_some())
}

fn send(states: &[NotifyState<'_>]) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        crate::warn!("cannot notify systemd: {e}");
    }
}

/// `READY=1` with a first status.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status saying why.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The status line: endpoints and connection counts.
pub fn status_text(endpoints: &str, stats: &Stats) -> String {
    format!(
        "{endpoints}: {} active, {} total connections",
        stats.active(),
        stats.total()
    )
}

/// Keeps `STATUS=` current, at most once per [`STATUS_INTERVAL`] and only
/// when the counts changed. Runs until dropped.
pub async fn report_status(endpoints: String, stats: &Stats) {
    if !enabled() {
        return futures_lite::future::pending().await;
    }
    // What READY=1 reported: a connection counted before this task first
    // runs (the one that triggered socket activation, say) is news.
    let mut last = (0, 0);
    loop {
        Timer::after(STATUS_INTERVAL).await;
        let now = (stats.active(), stats.total());
        if now != last {
            send(&[NotifyState::Status(&status_text(&endpoints, stats))]);
            last = now;
        }
    }
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for
/// (`WATCHDOG_USEC`, for this process per `WATCHDOG_PID`). Runs until dropped.
pub async fn keep_watchdog_happy() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return futures_lite::future::pending().await;
    };
    loop {
        send(&[NotifyState::Watchdog]);
        Timer::after(interval / 2).await;
    }
}
