//! `--log-time no`: log lines without the relay's own timestamp, for
//! loggers that stamp each line themselves (s6-log, svlogd, multilog).

mod common;

use common::*;

/// Whether `line` starts with the relay's UTC timestamp
/// (`2026-11-21T05:40:01.123Z `).
fn stamped(line: &str) -> bool {
    let Some((stamp, _)) = line.split_once(' ') else {
        return false;
    };
    stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T'
}

/// The relay's log from start to a clean stop, with `args` before LISTEN.
fn log_of(args: &[&str]) -> Vec<String> {
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let mut all: Vec<&str> = args.to_vec();
    all.extend([socket.as_str(), "127.0.0.1:9"]);
    let mut relay = Relay::start(&all);
    relay.wait_for_line("ready: relaying");
    relay.signal(Signal::TERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status:?}; log:\n{log}");
    log.lines().map(str::to_string).collect()
}

#[test]
fn every_line_carries_a_timestamp_by_default() {
    let log = log_of(&[]);
    assert!(log.len() >= 3, "{log:?}");
    for line in &log {
        assert!(stamped(line), "no timestamp: {line:?}");
    }
}

#[test]
fn log_time_no_leaves_the_timestamp_out() {
    for no in ["no", "false", "0", "off"] {
        let log = log_of(&["--log-time", no]);
        assert!(
            log.iter().any(|l| l.starts_with("listening on ")),
            "--log-time {no}: {log:?}"
        );
        assert!(
            log.iter().any(|l| l.starts_with("ready: relaying ")),
            "--log-time {no}: {log:?}"
        );
        for line in &log {
            assert!(!stamped(line), "--log-time {no}: {line:?}");
        }
    }
    let log = log_of(&["--log-time", "yes"]);
    assert!(log.iter().all(|l| stamped(l)), "{log:?}");
}

#[test]
fn log_time_takes_a_boolean() {
    let finished = run_command(command(&[
        "--log-time",
        "maybe",
        "/tmp/x.sock",
        "127.0.0.1:80",
    ]));
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("--log-time") && finished.stderr.contains("maybe"),
        "{}",
        finished.stderr
    );
}
