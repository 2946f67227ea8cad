//! Logging for the journal: with standard error being the journal
//! (`JOURNAL_STREAM`), every line carries a syslog priority instead of a
//! timestamp, the fatal one `<3>`.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::process::{ExitStatus, Stdio};

use common::*;

/// What a relay wrote to a standard error file, and how it ended.
struct Logged {
    status: ExitStatus,
    lines: Vec<String>,
}

/// Runs the relay with standard error to a file and `JOURNAL_STREAM` set to
/// `journal(device, inode of that file)` (None: unset). With `stop`, waits
/// for the listening line and sends SIGTERM; otherwise the relay must exit
/// by itself.
fn run_logged(args: &[&str], journal: Option<fn(u64, u64) -> String>, stop: bool) -> Logged {
    let dir = TempDir::new();
    let path = dir.join("stderr.log");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let mut relay = command(args);
    relay.env_remove("JOURNAL_STREAM");
    if let Some(journal) = journal {
        relay.env("JOURNAL_STREAM", journal(meta.dev(), meta.ino()));
    }
    relay
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    let mut child = ChildGuard(relay.spawn().expect("spawn relay"));
    let log = || fs::read_to_string(&path).unwrap();
    if stop {
        wait_until("the listening line", || {
            let listening = log().contains("listening on");
            if !listening {
                assert!(
                    child.0.try_wait().unwrap().is_none(),
                    "the relay exited: {}",
                    log()
                );
            }
            listening
        });
        // Our own child, not reaped yet.
        signal(child.0.id() as i32, Signal::TERM).unwrap();
    }
    let status = wait_exit(&mut child.0, DEADLINE).expect("the relay exits");
    let lines = log().lines().map(str::to_string).collect();
    Logged { status, lines }
}

/// `2026-11-21T05:40:01.123Z `: the shape of a timestamp prefix.
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 25
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b[24] == b' '
}

/// `<N>` with N a syslog priority: the journal's prefix.
fn priority(line: &str) -> Option<u8> {
    let rest = line.strip_prefix('<')?;
    let (n, _) = rest.split_once('>')?;
    n.parse().ok().filter(|n| *n <= 7)
}

/// With standard error being "the journal" (JOURNAL_STREAM names its device
/// and inode), every line has a `<N>` priority and no timestamp; otherwise
/// (unset, or naming another file) timestamps and no priority.
#[test]
fn journal_lines_carry_priorities_instead_of_timestamps() {
    let backend = Backend::tcp(echo);
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let args = ["-v", socket.as_str(), backend.connect_arg.as_str()];

    let journal = run_logged(&args, Some(|dev, ino| format!("{dev}:{ino}")), true);
    assert!(journal.status.success());
    assert!(!journal.lines.is_empty());
    for line in &journal.lines {
        assert!(priority(line).is_some(), "no <N> prefix: {line:?}");
        assert!(
            !line.contains("Z "),
            "a timestamp in journal mode: {line:?}"
        );
    }
    assert!(
        journal.lines.contains(&format!("<6>listening on {socket}")),
        "{:?}",
        journal.lines
    );

    let elsewhere = |dev: u64, ino: u64| format!("{dev}:{}", ino + 1);
    for (what, journal) in [
        ("unset", None),
        ("another file", Some(elsewhere as fn(u64, u64) -> String)),
    ] {
        let plain = run_logged(&args, journal, true);
        assert!(plain.status.success());
        assert!(!plain.lines.is_empty());
        for line in &plain.lines {
            assert!(has_timestamp(line), "JOURNAL_STREAM {what}: {line:?}");
            assert!(!line.starts_with('<'), "JOURNAL_STREAM {what}: {line:?}");
        }
    }
}

/// The line that says why the relay could not start is a log line too: in
/// the journal it must carry `<3>` (err), or `journalctl -p err` misses the
/// reason a unit failed.
#[test]
fn journal_fatal_errors_carry_err_priority() {
    let backend = Backend::tcp(echo);
    let dir = TempDir::new();
    let missing_dir = dir.arg("missing/relay.sock");
    let cases: [(&[&str], i32); 2] = [
        (&[missing_dir.as_str(), backend.connect_arg.as_str()], 1),
        (&["127.0.0.1:0", "sd-listen"], 2),
    ];
    for (args, code) in cases {
        let logged = run_logged(args, Some(|dev, ino| format!("{dev}:{ino}")), false);
        assert_eq!(
            logged.status.code(),
            Some(code),
            "{args:?}: {:?}",
            logged.lines
        );
        let last = logged.lines.last().expect("an error line");
        assert_eq!(
            priority(last),
            Some(3),
            "{args:?}: the fatal error line has no <3> prefix: {:?}",
            logged.lines
        );
    }
}
