//! Property tests: the time span parser against systemd's own
//! (`systemd-analyze timespan`, where it is installed) and against its own
//! invariants everywhere; the real binary on random command lines (never a
//! panic or a hang, exit status 0, 1 or 2, nothing created when rejected).
//! Random command lines through the parser in-process are in `src/cli.rs`.

mod common;

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use common::*;
use simpletcpunixrelay::timespan::{Refusal, parse_usec};

// ---------------------------------------------------------------------------
// Generated spans: systemd's grammar, and the noise around its corners

/// Every unit systemd knows, and near misses (`ns`, `S`, `mon`, `secs`).
const UNITS: &[&str] = &[
    "", "", "", "s", "sec", "second", "seconds", "m", "min", "minute", "minutes", "h", "hr",
    "hour", "hours", "d", "day", "days", "w", "week", "weeks", "M", "month", "months", "y", "year",
    "years", "ms", "msec", "us", "usec", "\u{3bc}s", "\u{b5}s", "ns", "nsec", "S", "mon", "secs",
    "hrs", "\u{b5}", "x",
];

/// The units systemd knows (none: seconds).
const VALID_UNITS: &[&str] = &[
    "", "", "", "", "s", "sec", "second", "seconds", "m", "min", "minute", "minutes", "h", "hr",
    "hour", "hours", "d", "day", "days", "w", "week", "weeks", "M", "month", "months", "y", "year",
    "years", "ms", "msec", "us", "usec", "\u{3bc}s", "\u{b5}s",
];

/// Whitespace systemd skips, what only `strtoll` skips, and what neither does.
const SPACES: &[&str] = &[
    "", "", "", " ", " ", "  ", "\t", "\n", "\r", "\u{b}", "\u{c}", "\u{a0}", "\u{2003}",
    "\u{3000}", "\u{85}",
];

/// A string of `min..=max` characters drawn from `alphabet` (cheaper than
/// a regular expression strategy).
fn string_of(
    alphabet: &'static [char],
    min: usize,
    max: usize,
) -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(prop::sample::select(alphabet), min..=max)
        .prop_map(|chars| chars.into_iter().collect())
}

const DIGITS: &[char] = &['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];

/// Digits, mostly short, sometimes long enough to overflow.
fn digits(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        16 => (0u32..1000).prop_map(|n| n.to_string()),
        2 => string_of(DIGITS, 0, max),
        1 => prop::sample::select(
            &[
                "9223372036854775807",
                "9223372036854775808",
                "18446744073709",
                "18446744073708",
                "0",
                "00000000000000000000000000000001",
            ][..]
        )
        .prop_map(String::from),
    ]
}

/// One component: spaces, a sign, a number with or without a fraction, a unit.
fn component() -> impl Strategy<Value = String> {
    (
        prop_oneof![4 => Just(""), 1 => prop::sample::select(SPACES)],
        prop_oneof![
            12 => Just(""),
            1 => prop::sample::select(&["+", "-", "+-", ".", "-0"][..]),
        ],
        digits(24),
        prop_oneof![
            6 => Just(None),
            3 => digits(26).prop_map(Some),
            1 => Just(Some(String::new())),
        ],
        prop_oneof![4 => Just(""), 1 => prop::sample::select(SPACES)],
        prop_oneof![6 => prop::sample::select(VALID_UNITS), 1 => prop::sample::select(UNITS)],
    )
        .prop_map(|(space, sign, whole, fraction, gap, unit)| {
            let mut out = format!("{space}{sign}{whole}");
            if let Some(fraction) = fraction {
                out.push('.');
                out.push_str(&fraction);
            }
            if !unit.is_empty() {
                out.push_str(gap);
            }
            out.push_str(unit);
            out
        })
}

/// A whole span: components, `infinity` in its forms, or noise added to one.
fn span() -> impl Strategy<Value = String> {
    let spans = (
        prop::collection::vec(component(), 1..4),
        prop_oneof![4 => Just(""), 1 => prop::sample::select(SPACES)],
        prop_oneof![4 => Just(""), 1 => prop::sample::select(SPACES)],
    )
        .prop_map(|(parts, before, after)| format!("{before}{}{after}", parts.concat()))
        .boxed();
    let infinity = (
        prop::sample::select(SPACES),
        prop::sample::select(&["infinity", "infinity", "infinit", "Infinity", "infinitys"][..]),
        prop::sample::select(SPACES),
    )
        .prop_map(|(a, word, b)| format!("{a}{word}{b}"));
    let noisy = (
        spans.clone(),
        any::<prop::sample::Index>(),
        any::<char>().prop_filter("argv has no NUL", |c| *c != '\0'),
    )
        .prop_map(|(span, at, noise)| {
            let chars: Vec<char> = span.chars().collect();
            let at = at.index(chars.len() + 1);
            let mut out: String = chars[..at].iter().collect();
            out.push(noise);
            out.extend(&chars[at..]);
            out
        });
    prop_oneof![12 => spans, 1 => infinity, 2 => noisy]
}

/// A runner whose cases are the same on every run, so that a failure found
/// once is found again.
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

// ---------------------------------------------------------------------------
// systemd-analyze timespan as the oracle

/// What `systemd-analyze timespan` said about one span.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Accepted, in microseconds (`u64::MAX`: infinity).
    Usec(u64),
    Refused(Refusal),
}

/// Asks systemd about `spans`, many per invocation. It stops at the first
/// span it refuses (after printing the accepted ones), so the next
/// invocation goes on after that one.
fn systemd_verdicts(tool: &std::path::Path, spans: &[String]) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(spans.len());
    while verdicts.len() < spans.len() {
        let rest = &spans[verdicts.len()..];
        let batch = &rest[..rest.len().min(1000)];
        let output = Command::new(tool)
            .args(["--no-pager", "timespan", "--"])
            .args(batch)
            .env("SYSTEMD_COLORS", "0")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .expect("run systemd-analyze");
        let stdout = String::from_utf8_lossy(&output.stdout);
        // One "μs: N" line (indented by exactly six spaces, which no line
        // of a multi-line "Original:" cell is) per accepted span.
        let accepted: Vec<u64> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("      \u{3bc}s: "))
            .map(|n| n.parse().expect("a number of microseconds"))
            .collect();
        assert!(accepted.len() <= batch.len(), "{stdout}");
        verdicts.extend(accepted.iter().map(|&n| Verdict::Usec(n)));
        if output.status.success() {
            assert_eq!(accepted.len(), batch.len(), "{stdout}");
            continue;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let refusal = if stderr.contains("Numerical result out of range") {
            Refusal::OutOfRange
        } else if stderr.contains("Invalid argument") {
            Refusal::Invalid
        } else {
            panic!("systemd-analyze failed unexpectedly: {stderr}");
        };
        verdicts.push(Verdict::Refused(refusal));
    }
    verdicts
}

fn our_verdict(span: &str) -> Verdict {
    match parse_usec(span) {
        Ok(Some(usec)) => Verdict::Usec(usec),
        Ok(None) => Verdict::Usec(u64::MAX),
        Err(refusal) => Verdict::Refused(refusal),
    }
}

#[test]
fn spans_are_read_as_systemd_analyze_reads_them() {
    let Some(tool) = tool("systemd-analyze") else {
        skip("systemd-analyze is not installed: no oracle for time spans");
        return;
    };
    // systemd answers many accepted spans per invocation but only one
    // refused one, so at most 250 spans that we refuse are asked about;
    // after them, only those we accept are kept (up to 3000).
    let mut runner = runner(1);
    let strategy = span();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..100_000 {
        if accepted.len() >= 3000 {
            break;
        }
        let span = strategy.new_tree(&mut runner).unwrap().current();
        if parse_usec(&span).is_ok() {
            accepted.push(span);
        } else if refused.len() < 250 {
            refused.push(span);
        }
    }
    let spans: Vec<String> = accepted.into_iter().chain(refused).collect();
    let started = Instant::now();
    let theirs = systemd_verdicts(&tool, &spans);
    let differences: Vec<String> = spans
        .iter()
        .zip(&theirs)
        .filter(|(span, theirs)| our_verdict(span) != **theirs)
        .map(|(span, theirs)| format!("{span:?}: systemd {theirs:?}, here {:?}", our_verdict(span)))
        .collect();
    eprintln!(
        "{} spans compared with systemd-analyze in {:?}",
        spans.len(),
        started.elapsed()
    );
    assert!(
        differences.is_empty(),
        "{} of {} spans read differently:\n{}",
        differences.len(),
        spans.len(),
        differences[..differences.len().min(40)].join("\n")
    );
}

// ---------------------------------------------------------------------------
// The parser's own invariants

const USEC_PER: &[(&str, u64)] = &[
    ("us", 1),
    ("ms", 1_000),
    ("s", 1_000_000),
    ("min", 60_000_000),
    ("h", 3_600_000_000),
    ("d", 86_400_000_000),
    ("w", 604_800_000_000),
    ("M", 2_629_800_000_000),
    ("y", 31_557_600_000_000),
];

proptest! {
    #![proptest_config(Config { cases: 20_000, failure_persistence: None, ..Config::default() })]

    /// Nothing makes the parser panic, and infinity is only ever `infinity`.
    #[test]
    fn any_text_is_parsed_or_refused(text in prop_oneof![
        1 => prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect::<String>()),
        3 => span(),
    ]) {
        if let Ok(None) = parse_usec(&text) {
            prop_assert_eq!(text.trim_matches([' ', '\t', '\n', '\r']), "infinity");
        }
    }

    /// A number and a unit mean that many units, below 2^64-1 us; from
    /// there on the span is out of range.
    #[test]
    fn a_number_and_a_unit(n in any::<u64>(), unit in prop::sample::select(USEC_PER), shift in 0u32..64) {
        let n = n >> shift;
        let (name, usec) = unit;
        let got = parse_usec(&format!("{n}{name}"));
        let fits = n <= i64::MAX as u64 && n < u64::MAX / usec;
        if fits {
            prop_assert_eq!(got, Ok(Some(n * usec)));
        } else {
            prop_assert_eq!(got, Err(Refusal::OutOfRange));
        }
    }

    /// Components add up, whatever separates them, until 2^64-1 us.
    #[test]
    fn components_add_up(a in component(), b in component(), gap in prop::sample::select(&[" ", "\t", "\n", "\r", "  "][..])) {
        if let (Ok(Some(x)), Ok(Some(y))) = (parse_usec(&a), parse_usec(&b)) {
            let joined = parse_usec(&format!("{a}{gap}{b}"));
            match x.checked_add(y).filter(|sum| *sum < u64::MAX) {
                Some(sum) => prop_assert_eq!(joined, Ok(Some(sum))),
                None => prop_assert_eq!(joined, Err(Refusal::OutOfRange)),
            }
        }
    }

    /// Fractions are truncated to microseconds, whatever their length.
    #[test]
    fn fractions_truncate_to_microseconds(whole in 0u64..1_000_000, fraction in string_of(DIGITS, 1, 40)) {
        let micros: u64 = format!("{fraction:0<6}")[..6].parse().unwrap();
        prop_assert_eq!(
            parse_usec(&format!("{whole}.{fraction}s")),
            Ok(Some(whole * 1_000_000 + micros))
        );
    }

    /// systemd's whitespace around an accepted span changes nothing; other
    /// whitespace after it, or before it where strtoll does not skip it, is refused.
    #[test]
    fn whitespace_around_a_span(
        span in span(),
        pad in string_of(&[' ', '\t', '\n', '\r'], 1, 3),
        other in prop::sample::select(&["\u{b}", "\u{c}", "\u{a0}", "\u{2003}", "\u{3000}"][..]),
    ) {
        if let Ok(value) = parse_usec(&span) {
            prop_assert_eq!(parse_usec(&format!("{pad}{span}{pad}")), Ok(value));
            let after = format!("{span}{other}");
            prop_assert!(parse_usec(&after).is_err(), "{:?}", after);
            let before = format!("{other}{span}");
            if other.len() > 1 {
                prop_assert!(parse_usec(&before).is_err(), "{:?}", before);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The real binary on random command lines

/// Options, values and endpoints to draw from: every option in its forms,
/// good and bad values, endpoints the test may create in its directory.
fn command_line() -> impl Strategy<Value = Vec<OsString>> {
    let option = prop::sample::select(
        &[
            "-c",
            "--connections-max",
            "--connect-timeout",
            "--idle-timeout",
            "--exit-idle-time",
            "--shutdown-timeout",
            "--socket-mode",
            "--socket-group",
            "--sandbox",
            "--proxy-protocol",
            "--allow-uid",
            "--allow-gid",
            "--keepalive",
            "--ready-fd",
            "--connect-retry",
            "--fd-store",
            "-q",
            "-v",
            "-vq",
            "-qv",
            "-vc",
            "--quiet=1",
            "--frobnicate",
            "--",
            "-",
        ][..],
    )
    .prop_map(String::from);
    let value = prop_oneof![
        span(),
        (0u32..1_000_000).prop_map(|n| n.to_string()),
        prop::sample::select(
            &[
                "0660",
                "01777",
                "10000",
                "root",
                "0",
                "65535",
                "nobody",
                "best-effort",
                "strict",
                "off",
                "v1",
                "v2",
                "v3",
                "3",
                "bash",
                "",
                "18446744073709551615s",
                "9300000000000000000s",
                "32768",
                "0x10",
                "-0",
                "+5",
            ][..]
        )
        .prop_map(String::from),
        prop::collection::vec(
            any::<char>().prop_filter("argv has no NUL", |c| *c != '\0'),
            0..6
        )
        .prop_map(|c| c.into_iter().collect::<String>()),
    ];
    let gnu = (
        prop::sample::select(
            &[
                "--connections-max=",
                "--exit-idle-time=",
                "--idle-timeout=",
                "--socket-mode=",
                "--keepalive=",
                "--sandbox=",
            ][..],
        ),
        value.clone(),
    )
        .prop_map(|(option, value)| format!("{option}{value}"));
    let endpoint = prop::sample::select(
        &[
            "./relay.sock",
            "unix:./other.sock",
            "127.0.0.1:0",
            "[::1]:0",
            "127.0.0.1:9",
            "localhost:9",
            "./backend.sock",
            "@simpletcpunixrelay-properties",
            "sd-listen",
            "fd:9",
            "fd:0",
            ":99999",
            "",
            "x",
        ][..],
    )
    .prop_map(String::from);
    let word = prop_oneof![
        3 => endpoint.prop_map(OsString::from),
        3 => option.prop_map(OsString::from),
        3 => value.prop_map(OsString::from),
        1 => gnu.prop_map(OsString::from),
        1 => prop::collection::vec(any::<u8>().prop_filter("argv has no NUL", |b| *b != 0), 0..8)
            .prop_map(OsString::from_vec),
    ];
    let words = prop::collection::vec(word, 0..7);
    // Lines that mostly start the relay: two endpoints it can serve, and
    // options with values it takes, in GNU forms too.
    let good_option = prop::sample::select(GOOD_OPTIONS);
    let good = (
        prop::collection::vec(good_option.clone(), 0..3),
        prop::sample::select(&["./relay.sock", "127.0.0.1:0", "unix:./x.sock"][..]),
        prop::sample::select(&["127.0.0.1:9", "./backend.sock", "[::1]:9"][..]),
        prop::collection::vec(good_option, 0..3),
    )
        .prop_map(|(before, listen, connect, after)| {
            let mut line: Vec<OsString> = before.concat().into_iter().map(OsString::from).collect();
            line.push(listen.into());
            line.push(connect.into());
            line.extend(after.concat().into_iter().map(OsString::from));
            line
        });
    prop_oneof![3 => words, 1 => good]
}

/// Options with values the relay takes, in GNU forms too.
const GOOD_OPTIONS: &[&[&str]] = &[
    &["-v"],
    &["-q"],
    &["-vc5"],
    &["--connections-max=3"],
    &["--idle-timeout", "+5min .5s"],
    &["--exit-idle-time=1h"],
    &["--connect-timeout", "\u{b}10"],
    &["--shutdown-timeout=0"],
    &["--sandbox", "off"],
    &["--keepalive=32767"],
    &["--proxy-protocol=v2"],
    &["--connect-retry"],
];

/// Runs the relay in `dir` with `args`: its exit status, and its standard
/// error. A relay that starts (`listening on`) is stopped with SIGTERM.
fn run_relay(dir: &TempDir, args: &[OsString]) -> (Option<i32>, String) {
    let mut child = Command::new(relay_bin())
        .args(args)
        .current_dir(&dir.0)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("FDSTORE")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&chunk[..n]);
                    let _ = tx.send((false, all.clone()));
                }
            }
        }
        let _ = tx.send((true, all));
    });
    let deadline = Instant::now() + DEADLINE;
    let mut log = Vec::new();
    let mut stopped = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((done, bytes)) => {
                log = bytes;
                if done {
                    break;
                }
                if !stopped && String::from_utf8_lossy(&log).contains("listening on ") {
                    // Our own child, not yet reaped.
                    let _ = signal(child.id() as i32, Signal::TERM);
                    stopped = true;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{args:?}: the relay neither exited nor listened within {DEADLINE:?}; log:\n{}",
                    String::from_utf8_lossy(&log)
                );
            }
        }
    }
    let status = wait_exit(&mut child, DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{args:?}: the relay did not exit after its log ended")
    });
    (status.code(), String::from_utf8_lossy(&log).into_owned())
}

#[test]
fn random_command_lines_exit_0_1_or_2_and_a_rejected_one_creates_nothing() {
    let mut runner = runner(150);
    let started = Instant::now();
    let statuses = RefCell::new([0usize; 3]);
    runner
        .run(&command_line(), |args| {
            let dir = TempDir::new();
            let (code, log) = run_relay(&dir, &args);
            prop_assert!(
                matches!(code, Some(0..=2)),
                "{:?}: exit status {:?}; log:\n{}",
                args,
                code,
                log
            );
            prop_assert!(
                !log.contains("panicked"),
                "{:?}: a panic; log:\n{}",
                args,
                log
            );
            let code = code.unwrap() as usize;
            statuses.borrow_mut()[code] += 1;
            if code == 2 {
                prop_assert!(
                    dir.entries().is_empty(),
                    "{:?}: rejected, yet created {:?}",
                    args,
                    dir.entries()
                );
                let lines: Vec<&str> = log.lines().collect();
                prop_assert_eq!(lines.len(), 1, "{:?}: one line; log:\n{}", args, log);
            }
            Ok(())
        })
        .unwrap();
    let statuses = statuses.into_inner();
    eprintln!(
        "random command lines in {:?}: exit 0: {}, 1: {}, 2: {}",
        started.elapsed(),
        statuses[0],
        statuses[1],
        statuses[2]
    );
    // The lines must reach the relay's running state now and then, or the
    // test would only see the parser.
    assert!(statuses[0] > 0, "no random command line started the relay");
}
