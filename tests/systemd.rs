//! systemd integration, end to end: notifications on a real `NOTIFY_SOCKET`,
//! socket activation through `systemd-socket-activate`, journal-style logs,
//! the unit templates in `systemd/` (`systemd-analyze verify` and exposure
//! scores), `PrivateNetwork=` emulated with a network namespace, and the real
//! thing: the units under systemd as PID 1 in `systemd-nspawn`.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `systemd-socket-activate ARGS...` with a clean activation environment.
fn socket_activate(args: &[&str]) -> Command {
    let mut command = Command::new(tool("systemd-socket-activate").unwrap());
    command.args(args);
    for variable in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ] {
        command.env_remove(variable);
    }
    command
}

/// The relay's own error lines on standard error (not the activator's), with
/// or without a timestamp before them.
fn relay_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("simpletcpunixrelay: "))
        .collect()
}

/// The unit templates.
fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

// ---------------------------------------------------------------------------
// Readiness, status, stopping, watchdog
// ---------------------------------------------------------------------------

/// READY=1 comes only once the listener accepts: a client that connects the
/// moment it arrives is served. The socket path is known in advance, so the
/// test does not wait for the `listening on` line first.
#[test]
fn ready_only_once_the_listener_accepts() {
    let backend = Backend::tcp(echo);
    for round in 0..3 {
        let dir = TempDir::new();
        let socket = dir.arg("relay.sock");
        let log = dir.join("relay.log");
        let mut notifications = Notifications::new();
        let mut relay = notifications.relay_command(&[&socket, &backend.connect_arg]);
        relay
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let _relay = ChildGuard(relay.spawn().expect("spawn relay"));

        let ready = notifications.wait_for("READY=1");
        let client = try_connect(&socket).expect("connect as soon as READY=1 came");
        let data = payload(100_000, round);
        assert_eq!(exchange(client, data.clone()), data);

        let status = status_of(&ready).expect("READY=1 comes with a STATUS=");
        assert!(status.contains("0 active, 0 total"), "{status}");
        assert!(status.contains(&backend.connect_arg), "{status}");
        let log = fs::read_to_string(&log).unwrap();
        assert!(
            log.contains("listening on"),
            "the listening line comes before READY=1: {log}"
        );
    }
}

/// Whether a notification's `STATUS=` contains `wanted`.
fn status_says(wanted: &'static str) -> impl Fn(&str) -> bool {
    move |m: &str| status_of(m).is_some_and(|s| s.contains(wanted))
}

/// Opens a connection through the relay and waits until bytes flow both
/// ways, so the relay has surely counted it.
fn open_connection(address: &str) -> Box<dyn Conn> {
    let mut client = connect(address);
    client.write_all(b"x").unwrap();
    read_exactly(&mut *client, 1);
    client
}

/// How long STATUS= may take to follow a change: it is throttled to about
/// once a second.
const STATUS_LAG: Duration = Duration::from_millis(2500);

/// STATUS= follows the connection counts, only when they change, at most
/// about once a second.
#[test]
fn status_tells_active_and_total_connections() {
    let backend = Backend::tcp(echo);
    let mut notifications = Notifications::new();
    let relay = Relay::start_command(
        notifications.relay_command(&["127.0.0.1:0", &backend.connect_arg]),
        1,
    );
    let ready = notifications.wait_for("READY=1");
    assert!(
        status_of(&ready)
            .unwrap()
            .contains("0 active, 0 total connections")
    );
    // Nothing changes, nothing is sent.
    let quiet = notifications.wait_within(Duration::from_millis(1200), |m| status_of(m).is_some());
    assert_eq!(quiet, None, "a STATUS= without any change");

    // One connection, open: relayed end to end, then counted.
    let client = open_connection(relay.address());
    notifications
        .wait_within(STATUS_LAG, status_says("1 active, 1 total connections"))
        .unwrap_or_else(|| panic!("no STATUS= with 1 active: {:?}", notifications.received));
    drop(client);
    notifications
        .wait_within(STATUS_LAG, status_says("0 active, 1 total connections"))
        .unwrap_or_else(|| panic!("no STATUS= with 0 active: {:?}", notifications.received));

    // A burst of connections: the status catches up, never more than about
    // once a second.
    for _ in 0..5 {
        assert_eq!(
            exchange(connect(relay.address()), b"burst".to_vec()),
            b"burst"
        );
    }
    notifications
        .wait_within(STATUS_LAG * 2, status_says("0 active, 6 total connections"))
        .unwrap_or_else(|| panic!("no STATUS= with 6 total: {:?}", notifications.received));
    let updates: Vec<Instant> = notifications
        .received
        .iter()
        .filter(|(_, m)| !has_line(m, "READY=1") && status_of(m).is_some())
        .map(|(at, _)| *at)
        .collect();
    for pair in updates.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(800),
            "STATUS= updates {gap:?} apart: {:?}",
            notifications.received
        );
    }
}

/// A connection that was waiting when the relay started, as the one that
/// triggers socket activation always is, is counted in STATUS= too. Whether
/// the relay counts it before or after its status task starts is up to the
/// scheduler: five rounds, so that a relay that misses it in either order
/// fails (almost surely).
#[test]
fn status_counts_the_connection_that_started_the_relay() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let relay_path = relay_bin();
    for round in 1..=5 {
        let mut notifications = Notifications::new();
        let listen = format!("127.0.0.1:{}", free_port());
        // The activator passes on only the variables it is told to.
        let notify = format!("NOTIFY_SOCKET={}", notifications.path.display());
        let mut relay = start_activator(
            &[
                "-l",
                &listen,
                "-E",
                &notify,
                relay_path.to_str().unwrap(),
                "sd-listen",
                &backend.connect_arg,
            ],
            1,
        );
        let _client = open_connection(&listen);
        notifications.wait_for("READY=1");
        relay.wait_for_line("listening on ");
        notifications
            .wait_within(STATUS_LAG, status_says("1 active, 1 total connections"))
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: no STATUS= with 1 active, though a connection is open: {:?}",
                    notifications.received
                )
            });
    }
}

/// SIGTERM: STOPPING=1, then a clean exit; READY=1 was sent exactly once.
#[test]
fn stopping_on_sigterm() {
    let backend = Backend::tcp(echo);
    let mut notifications = Notifications::new();
    let mut relay = Relay::start_command(
        notifications.relay_command(&["127.0.0.1:0", &backend.connect_arg]),
        1,
    );
    notifications.wait_for("READY=1");
    relay.signal(libc::SIGTERM);
    notifications.wait_for("STOPPING=1");
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
    // Anything still queued arrives before the relay's exit was noticed.
    while notifications.next(Duration::from_millis(1)).is_some() {}
    assert_eq!(
        notifications.count("READY=1"),
        1,
        "{:?}",
        notifications.received
    );
}

/// A relay command whose `WATCHDOG_PID` is `pid`, or its own pid (`$$` of
/// the shell that execs it) when `pid` is `None`.
fn watched(notifications: &Notifications, backend: &Backend, pid: Option<u32>) -> Command {
    let mut command = Command::new("sh");
    let pid = pid.map_or("$$".to_string(), |p| p.to_string());
    command
        .arg("-c")
        .arg(format!("WATCHDOG_PID={pid} exec \"$0\" \"$@\""))
        .arg(relay_bin())
        .args(["127.0.0.1:0", &backend.connect_arg])
        .env("NOTIFY_SOCKET", &notifications.path)
        .env("WATCHDOG_USEC", "200000");
    command
}

/// WATCHDOG_USEC=200ms for this process: WATCHDOG=1 every 100 ms or so.
#[test]
fn watchdog_keepalives_when_asked() {
    let backend = Backend::tcp(echo);
    let mut notifications = Notifications::new();
    let _relay = Relay::start_command(watched(&notifications, &backend, None), 1);
    notifications.wait_for("READY=1");
    let started = Instant::now();
    for _ in 0..4 {
        notifications.wait_for("WATCHDOG=1");
    }
    // Four at half the interval take about 300-400 ms; allow a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        notifications.received
    );
}

/// The watchdog watches the data path: once the engine thread is stuck (a
/// test build's fault at its first connection), WATCHDOG=1 stops, with a
/// warning, so that systemd's WatchdogSec= restarts the relay.
#[test]
fn no_watchdog_while_the_engine_is_stuck() {
    let backend = Backend::tcp(echo);
    let mut notifications = Notifications::new();
    let mut command = watched(&notifications, &backend, None);
    command.env("SIMPLETCPUNIXRELAY_TEST_ENGINE", "hang");
    let mut relay = Relay::start_command(command, 1);
    notifications.wait_for("READY=1");
    notifications.wait_for("WATCHDOG=1");
    let _client = std::net::TcpStream::connect(relay.address()).unwrap();
    relay.wait_for_line("the relay engine did not answer");
    // Pings already on their way may still arrive; then, for ten intervals
    // (2 s), none.
    while notifications
        .wait_within(Duration::from_millis(300), |m| has_line(m, "WATCHDOG=1"))
        .is_some()
    {}
    let watchdog = notifications.wait_within(Duration::from_secs(2), |m| has_line(m, "WATCHDOG=1"));
    assert_eq!(watchdog, None, "{:?}", notifications.received);
}

/// No thread may die while the process goes on: the engine thread failing
/// (a test build's panic at its first connection) ends the relay with status
/// 1 and one error line saying where, instead of a process that accepts and
/// drops every client.
#[test]
fn a_failing_engine_ends_the_relay_with_status_1() {
    let backend = Backend::tcp(echo);
    let mut command = command(&["127.0.0.1:0", &backend.connect_arg]);
    command.env("SIMPLETCPUNIXRELAY_TEST_ENGINE", "panic");
    let mut relay = Relay::start_command(command, 1);
    let _client = std::net::TcpStream::connect(relay.address()).unwrap();
    let (status, log) = relay.finish();
    assert_eq!(status.code(), Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("thread 'relay-io'")
            && errors[0].contains("a test asked the engine to fail"),
        "{log}"
    );
}

/// WATCHDOG_PID naming another process: the watchdog is not ours to feed.
#[test]
fn no_watchdog_for_another_pid() {
    let backend = Backend::tcp(echo);
    let mut notifications = Notifications::new();
    let _relay = Relay::start_command(watched(&notifications, &backend, Some(1)), 1);
    notifications.wait_for("READY=1");
    // Five intervals of silence are proof enough.
    let watchdog = notifications.wait_within(Duration::from_secs(1), |m| has_line(m, "WATCHDOG=1"));
    assert_eq!(watchdog, None, "{:?}", notifications.received);
}

// ---------------------------------------------------------------------------
// Socket activation (systemd-socket-activate)
// ---------------------------------------------------------------------------

/// `systemd-socket-activate ARGS...` running with its `sockets` open (one
/// `Listening on` line each). Without `-a` it starts the relay at the first
/// client, as systemd does.
fn start_activator(args: &[&str], sockets: usize) -> Relay {
    let mut activator = Relay::start_command(socket_activate(args), 0);
    for _ in 0..sockets {
        activator.wait_for_line("Listening on ");
    }
    activator
}

/// `sd-listen` serves a TCP socket passed by socket activation.
#[test]
fn sd_listen_serves_a_passed_tcp_socket() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let listen = format!("127.0.0.1:{}", free_port());
    let relay_path = relay_bin();
    let mut relay = start_activator(
        &[
            "-l",
            &listen,
            relay_path.to_str().unwrap(),
            "sd-listen",
            &backend.connect_arg,
        ],
        1,
    );
    // The first client starts the relay; it is served like every other.
    let data = payload(200_000, 1);
    assert_eq!(exchange(connect(&listen), data.clone()), data);
    assert!(relay.wait_for_line("listening on ").ends_with(&listen));
    assert_eq!(exchange(connect(&listen), b"second".to_vec()), b"second");
    assert_eq!(backend.connections(), 2);
    relay.signal(libc::SIGTERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
}

/// `sd-listen:b` with two passed sockets named a (TCP) and b (Unix) serves b
/// only; a is left alone (its clients wait in the backlog, unanswered).
#[test]
fn sd_listen_by_name_serves_only_that_socket() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let dir = TempDir::new();
    let tcp = format!("127.0.0.1:{}", free_port());
    let unix = dir.arg("b.sock");
    let relay_path = relay_bin();
    let mut relay = start_activator(
        &[
            "-l",
            &tcp,
            "-l",
            &unix,
            "--fdname=a:b",
            relay_path.to_str().unwrap(),
            "sd-listen:b",
            &backend.connect_arg,
        ],
        2,
    );
    let data = payload(50_000, 2);
    assert_eq!(exchange(connect(&unix), data.clone()), data);
    assert!(relay.wait_for_line("listening on ").ends_with(&unix));
    assert_eq!(backend.connections(), 1);

    let mut ignored = try_connect(&tcp).expect("a is still listening (backlog)");
    ignored.write_all(b"anyone?").unwrap();
    assert_silent(
        &mut *ignored,
        Duration::from_millis(500),
        "socket a must not be served",
    );
    assert_eq!(backend.connections(), 1, "a's client reached the backend");

    relay.signal(libc::SIGTERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
}

/// With `-a` (Accept=yes) fd 3 is one connected socket: `sd-listen` and
/// `fd:3` both relay that connection, then the relay exits 0.
#[test]
fn accept_mode_relays_one_connection_then_exits_0() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let relay_path = relay_bin();
    for (seed, listen) in [(3, "sd-listen"), (4, "fd:3")] {
        let address = format!("127.0.0.1:{}", free_port());
        let mut activator = start_activator(
            &[
                "-a",
                "-l",
                &address,
                relay_path.to_str().unwrap(),
                listen,
                &backend.connect_arg,
            ],
            1,
        );
        let before = backend.connections();
        let data = payload(300_000, seed);
        assert_eq!(exchange(connect(&address), data.clone()), data, "{listen}");
        assert_eq!(backend.connections(), before + 1);
        activator.wait_for_line("(one inherited connection)");
        let died = activator.wait_for_line(" died with code ");
        assert!(
            died.trim_end().ends_with("died with code 0"),
            "{listen}: {died}\n{}",
            activator.log()
        );
    }
}

/// Checks a usage error: exit 2 and one relay line naming `argument` and
/// `reason`.
fn assert_usage_error(status: ExitStatus, stderr: &str, argument: &str, reason: &str) {
    assert_eq!(status.code(), Some(2), "{argument}: {stderr}");
    let lines = relay_lines(stderr);
    assert_eq!(lines.len(), 1, "{argument}: {stderr}");
    assert!(lines[0].contains(argument), "{argument}: {stderr}");
    assert!(lines[0].contains(reason), "{argument}: {stderr}");
}

/// Misuse is a usage error (exit 2, one line naming the argument): `sd-listen`
/// with nothing passed or with LISTEN_FDNAMES not naming every descriptor,
/// `fd:N` on a file, and, under socket activation,
/// `sd-listen:NAME` matching no socket and `fd:3` on a datagram socket.
/// Nothing is removed.
#[test]
fn activation_misuse_is_a_usage_error() {
    let backend = Backend::tcp(echo);

    let mut alone = command(&["sd-listen", &backend.connect_arg]);
    for variable in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        alone.env_remove(variable);
    }
    let output = run_command(alone);
    assert_usage_error(
        output.status,
        &output.stderr,
        "sd-listen",
        "no sockets were passed",
    );

    // A name for every passed descriptor, or none: sd_listen_fds_with_names
    // refuses anything else, and so does the relay.
    let mut miscounted = command(&["sd-listen", &backend.connect_arg]);
    miscounted
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "a:b")
        .env_remove("LISTEN_PID");
    let output = run_command(miscounted);
    assert_usage_error(
        output.status,
        &output.stderr,
        "sd-listen",
        "LISTEN_FDNAMES names 2 descriptors but LISTEN_FDS passes 1",
    );

    let on_a_file = command(&["fd:0", &backend.connect_arg]);
    let output = run_command_with_stdin(on_a_file, File::open(file!()).unwrap().into());
    assert_usage_error(output.status, &output.stderr, "fd:0", "not a socket");

    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip(&format!(
            "{t} is not installed (apt-get install systemd): activated misuse not checked"
        ));
        return;
    }
    let relay_path = relay_bin();
    let relay = relay_path.to_str().unwrap();
    let dir = TempDir::new();
    let named = dir.arg("named.sock");
    let mut activator = start_activator(
        &[
            "-l",
            &named,
            "--fdname=a",
            relay,
            "sd-listen:nomatch",
            &backend.connect_arg,
        ],
        1,
    );
    let _client = connect(&named); // starts the relay
    let (status, log) = activator.finish();
    assert_usage_error(status, &log, "sd-listen:nomatch", "FileDescriptorName");
    let kept = fs::symlink_metadata(&named).expect("the passed socket file is not removed");
    assert!(kept.file_type().is_socket());

    let udp = format!("127.0.0.1:{}", free_port());
    let mut activator =
        start_activator(&["-d", "-l", &udp, relay, "fd:3", &backend.connect_arg], 1);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"start", &udp).unwrap(); // starts the relay
    let (status, log) = activator.finish();
    assert_usage_error(status, &log, "fd:3", "not a stream socket");

    assert_eq!(backend.connections(), 0);
}

/// A Unix socket file passed by the service manager belongs to it: the relay
/// serves it but does not remove it when it stops.
#[test]
fn inherited_socket_file_is_not_removed() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let dir = TempDir::new();
    let path = dir.arg("inherited.sock");
    let relay_path = relay_bin();
    let mut relay = start_activator(
        &[
            "-l",
            &path,
            relay_path.to_str().unwrap(),
            "sd-listen",
            &backend.connect_arg,
        ],
        1,
    );
    assert_eq!(exchange(connect(&path), b"hello".to_vec()), b"hello");
    assert!(relay.wait_for_line("listening on ").ends_with(&path));
    relay.signal(libc::SIGTERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
    let kept = fs::symlink_metadata(&path).expect("the inherited socket file stays");
    assert!(kept.file_type().is_socket());
}

// ---------------------------------------------------------------------------
// Logging for the journal
// ---------------------------------------------------------------------------

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
        // SAFETY: kill with the pid of our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
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

// ---------------------------------------------------------------------------
// The unit templates: systemd-analyze
// ---------------------------------------------------------------------------

/// Exposure targets for each service instance.
const EXPOSURE_TARGETS: &[(&str, f64)] = &[
    ("simpletcpunixrelay-expose@foobar.service", 0.5),
    ("simpletcpunixrelay-reexpose@foobar.service", 1.0),
    ("simpletcpunixrelay-activated@8082.service", 1.0),
];

/// `systemd/check-units`, run from an unrelated directory: every unit as an
/// instance passes `systemd-analyze verify` with nothing on stderr, and each
/// service's exposure is within its target.
#[test]
fn units_verify_and_reach_their_exposure_targets() {
    if skip_if_missing(&["systemd-analyze"], "systemd") {
        return;
    }
    let elsewhere = TempDir::new();
    let mut check_units = Command::new(unit_dir().join("check-units"));
    check_units.current_dir(&elsewhere.0);
    let output = run_tool(check_units);
    let table = &output.stdout;
    eprintln!("{table}{}", output.stderr);
    assert!(output.status.success(), "check-units failed:\n{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{table}");
    for row in &rows {
        assert_eq!(row.last(), Some(&"ok"), "verify: {table}");
    }
    assert!(
        rows.iter()
            .any(|r| r[0] == "simpletcpunixrelay-activated@8082.socket")
    );
    for (unit, target) in EXPOSURE_TARGETS {
        let row = rows
            .iter()
            .find(|r| r[0] == *unit)
            .unwrap_or_else(|| panic!("{unit} missing:\n{table}"));
        let score: f64 = row[1].parse().expect("a score");
        assert!(score <= *target, "{unit}: {score} > {target}");
    }

    // The same scores straight from systemd-analyze, each template file given
    // as a path (scored as instance "i"), from an empty directory.
    for (unit, target) in EXPOSURE_TARGETS {
        let template = unit.split('@').next().unwrap().to_string() + "@.service";
        let mut security = Command::new(tool("systemd-analyze").unwrap());
        security
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit_dir().join(&template))
            .current_dir(&elsewhere.0);
        let output = run_tool(security).stdout;
        let score: f64 = output
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no score for {template}:\n{output}"));
        assert!(score <= *target, "{template}: {score} > {target}");
    }
}

/// check-units really fails on a bad key (verify itself exits 0 on those) and
/// on a score above its limit.
#[test]
fn check_units_catches_bad_units() {
    if skip_if_missing(&["systemd-analyze"], "systemd") {
        return;
    }
    let copy = TempDir::new();
    for entry in fs::read_dir(unit_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), copy.join(entry.file_name().to_str().unwrap())).unwrap();
    }
    let expose = copy.join("simpletcpunixrelay-expose@.service");
    let unit = fs::read_to_string(&expose).unwrap();
    fs::write(
        &expose,
        unit.replace("PrivateNetwork=yes", "PrivateNetwork=no\nNoSuchKey=1"),
    )
    .unwrap();
    let mut check_units = Command::new(unit_dir().join("check-units"));
    check_units.arg(&copy.0).current_dir(&copy.0);
    let output = run_tool(check_units);
    let report = &output.stdout;
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(report.contains("Unknown key 'NoSuchKey'"), "{report}");
    let row = report
        .lines()
        .find(|l| l.starts_with("simpletcpunixrelay-expose@foobar.service"))
        .unwrap();
    assert!(row.contains('!') && row.ends_with("FAILED"), "{report}");
}

// ---------------------------------------------------------------------------
// PrivateNetwork= emulated: a network namespace without systemd
// ---------------------------------------------------------------------------

/// What `PrivateNetwork=yes` + `JoinsNamespaceOf=` do, by hand: a TCP-only
/// backend on the loopback of its own network namespace, the relay inside
/// the same namespace listening on a Unix socket, and a client outside that
/// reaches the backend through the socket, and not over TCP.
#[test]
fn private_network_service_exposed_through_a_unix_socket() {
    if !is_root() {
        skip("needs root to create network namespaces");
        return;
    }
    if skip_if_missing(NETWORK_NAMESPACE_TOOLS, "util-linux iproute2") {
        return;
    }
    let namespace = NetworkNamespace::new();
    let greeting = b"hello from the namespace\n";
    let listener = namespace.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let backend = Backend::tcp_on(listener, move |mut conn: Box<dyn Conn>| {
        let _ = conn.write_all(greeting);
        echo(conn);
    });

    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let mut inside = namespace.command(relay_bin());
    inside.args([&socket, &backend.connect_arg]);
    let mut relay = Relay::start_command(inside, 1);
    assert_eq!(relay.address(), socket);
    assert_eq!(netns_of(relay.pid() as u32), namespace.id());

    let data = payload(500_000, 5);
    let reply = exchange(connect(&socket), data.clone());
    assert_eq!(&reply[..greeting.len()], greeting);
    assert!(reply[greeting.len()..] == data[..], "payload altered");
    assert_eq!(backend.connections(), 1);

    // From outside, the backend's port is nobody's, or someone else's.
    if let Ok(stranger) = try_connect(&backend.connect_arg) {
        drop(stranger);
    }
    assert_eq!(backend.connections(), 1, "the backend was reached over TCP");

    relay.signal(libc::SIGTERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
    assert!(
        !Path::new(&socket).exists(),
        "the relay's socket is removed"
    );
}

// ---------------------------------------------------------------------------
// The real thing: systemd as PID 1 in systemd-nspawn
// ---------------------------------------------------------------------------

/// foobar.service in the container: TCP only, on its own loopback.
const FOOBAR_UNIT: &str = include_str!("nspawn/foobar.service");

/// foobar itself (perl is in every Debian): greets, then echoes. After a
/// client that sent only "linger" has ended its sending, foobar keeps the
/// connection half-closed until /tmp/release exists, then says "released".
const FOOBAR_PL: &str = include_str!("nspawn/foobar.pl");

/// The client: sends its message, half-closes, prints the reply; exit 3 if
/// it cannot connect. Run it with [`client`].
const CLIENT_PL: &str = include_str!("nspawn/client.pl");

/// The client in the container ([`CLIENT_PL`], staged at `/stage`): sends
/// `message` to `address` (a socket path or HOST:PORT), run with `prefix`
/// (`setpriv …`); returns the exit code, the reply and stderr.
fn client(
    container: &Container,
    prefix: &str,
    address: &str,
    message: &str,
) -> (i32, String, String) {
    let output = container.sh(&format!(
        "{prefix} perl /stage/client.pl {address} {message}"
    ));
    (
        output.status.code().unwrap_or(-1),
        output.stdout,
        output.stderr,
    )
}

/// Installs the units the way the README says, with the configuration the
/// README shows.
const INSTALL: &str = include_str!("nspawn/install-units.sh");

/// The Debian root file system for systemd-nspawn; `None` (after a skip)
/// where root, nspawn or the file system cannot be had.
fn nspawn_root() -> Option<PathBuf> {
    if !is_root() {
        skip("needs root for systemd-nspawn");
        return None;
    }
    if skip_if_missing(CONTAINER_TOOLS, "systemd-container debootstrap") {
        return None;
    }
    match debian_rootfs() {
        Ok(root) => Some(root),
        Err(e) => {
            skip(&format!("cannot build the Debian root file system: {e}"));
            None
        }
    }
}

/// A container with systemd as PID 1, the relay at /usr/bin, foobar and
/// the units installed as the README says ([`INSTALL`]), and the clients
/// staged at /stage (the directory is kept while the container runs).
/// `None` (after a skip) where nspawn or a root file system cannot be had.
fn boot_with_units() -> Option<(Container, TempDir)> {
    let root = nspawn_root()?;
    let stage = TempDir::new();
    fs::write(stage.join("foobar.service"), FOOBAR_UNIT).unwrap();
    for (name, script) in [
        ("foobar.pl", FOOBAR_PL),
        ("client.pl", CLIENT_PL),
        ("stream.pl", STREAM_PL),
        ("pingpong.pl", PINGPONG_PL),
        ("loop.pl", LOOP_PL),
    ] {
        fs::write(stage.join(name), script).unwrap();
    }
    fs::create_dir(stage.join("units")).unwrap();
    for entry in fs::read_dir(unit_dir()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), stage.join("units").join(entry.file_name())).unwrap();
    }
    let console = stage.join("console.log");
    let container = Container::boot(
        &root,
        &[
            (&relay_bin(), "/usr/bin/simpletcpunixrelay"),
            (&stage.0, "/stage"),
        ],
        console,
    );
    container.ok(INSTALL);
    Some((container, stage))
}

/// The units under systemd as PID 1: foobar.service (TCP only, PrivateNetwork)
/// exposed at /run/foobar-unix/socket by the expose template, that socket
/// re-exposed on TCP 8081 and, socket-activated, on TCP 8082; a client in
/// the container reaches foobar through each, and not over TCP directly.
#[test]
fn units_under_systemd_in_nspawn() {
    let started = Instant::now();
    let Some((container, _stage)) = boot_with_units() else {
        return;
    };
    eprintln!("container running after {:.1?}", started.elapsed());

    // 1. Expose foobar.service at /run/foobar-unix/socket.
    let enabled = container
        .sh("systemctl enable simpletcpunixrelay-expose@foobar.service 2>&1")
        .stdout;
    assert!(enabled.contains("foobar.service.wants"), "{enabled}");
    // Starting foobar pulls the relay in (WantedBy=), ordered after it.
    container.ok("systemctl start foobar.service");
    container.ok("systemctl start simpletcpunixrelay-expose@foobar.service");
    let expose = "simpletcpunixrelay-expose@foobar.service";
    assert_eq!(
        container.ok("stat -c '%a %G' /run/foobar-unix /run/foobar-unix/socket"),
        "750 simpletcpunixrelay\n660 simpletcpunixrelay\n"
    );
    let greeting = "hello from foobar\n";
    let served = |reply: (i32, String, String), message: &str| {
        assert_eq!(reply.0, 0, "client failed: {}", reply.2);
        assert_eq!(reply.1, format!("{greeting}{message}"));
    };
    served(
        client(&container, "", "/run/foobar-unix/socket", "root"),
        "root",
    );
    // The relay really shares foobar's network namespace, not the host's.
    let foobar_netns = container.netns_of_unit("foobar.service");
    assert_eq!(container.netns_of_unit(expose), foobar_netns);
    assert_ne!(container.ok("readlink /proc/1/ns/net").trim(), foobar_netns);
    // foobar is not reachable over TCP from the container's network.
    let (code, _, stderr) = client(&container, "", "127.0.0.1:8080", "direct");
    assert_eq!(code, 3, "TCP to foobar must fail: {stderr}");
    // The socket is for the group: a member may connect, others may not.
    let gid = container.ok("getent group simpletcpunixrelay | cut -d: -f3");
    let member = format!("setpriv --reuid=4242 --regid=4242 --groups={}", gid.trim());
    served(
        client(&container, &member, "/run/foobar-unix/socket", "member"),
        "member",
    );
    let stranger = "setpriv --reuid=4243 --regid=4243 --clear-groups";
    let (code, _, stderr) = client(&container, stranger, "/run/foobar-unix/socket", "x");
    assert_eq!(code, 3, "a non-member must be refused");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // STATUS= reaches systemd.
    container.wait_for_output(
        &format!("systemctl show -p StatusText --value {expose} | grep -o '0 active, 2 total'"),
        "0 active, 2 total",
    );
    // The relay's own sandbox works within the unit's restrictions.
    let journal = container.ok(&format!("journalctl -o cat -u {expose}"));
    assert!(
        journal.contains("listening on /run/foobar-unix/socket"),
        "{journal}"
    );
    if kernel_has_landlock() {
        assert!(journal.contains("fully enforced"), "{journal}");
    }
    // Its own seccomp filter too, under the unit's (which lacks seccomp(2)).
    assert!(journal.contains(" system calls allowed"), "{journal}");
    // The system call filter still lets the relay raise its descriptor
    // limit to the hard one (glibc's setrlimit is prlimit64, not in
    // @resources).
    let limits = container.ok(&format!(
        "grep 'Max open files' /proc/$(systemctl show -p MainPID --value {expose})/limits"
    ));
    let limits: Vec<&str> = limits.split_whitespace().collect();
    assert_eq!(limits[3], limits[4], "soft and hard limit: {limits:?}");
    // A restart of foobar takes the relay along, into the new namespace.
    container.ok("systemctl restart foobar.service");
    container.wait_for_output(&format!("systemctl is-active {expose}"), "active");
    let foobar_netns = container.netns_of_unit("foobar.service");
    assert_eq!(container.netns_of_unit(expose), foobar_netns);
    served(
        client(&container, "", "/run/foobar-unix/socket", "again"),
        "again",
    );

    // 2. Re-expose the socket on TCP 127.0.0.1:8081.
    container.ok("systemctl enable --now simpletcpunixrelay-reexpose@foobar.service");
    served(
        client(&container, "", "127.0.0.1:8081", "reexposed"),
        "reexposed",
    );
    // Its listener is in systemd's file descriptor store: a restart, and a
    // crash (Restart=on-failure), adopt it instead of binding again, and
    // `systemctl stop` empties the store.
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    let stored = |c: &Container| {
        c.ok(&format!(
            "systemctl show -p NFileDescriptorStore --value {reexpose}"
        ))
    };
    assert_eq!(stored(&container), "1\n");
    container.ok(&format!("systemctl restart {reexpose}"));
    let adoptions = format!(
        "journalctl -o cat -u {reexpose} | grep -c 'adopted 127.0.0.1:8081 from the file descriptor store'"
    );
    container.wait_for_output(&adoptions, "1");
    served(
        client(&container, "", "127.0.0.1:8081", "restarted"),
        "restarted",
    );
    let pid = container.ok(&format!("systemctl show -p MainPID --value {reexpose}"));
    container.ok(&format!("kill -9 {}", pid.trim()));
    container.wait_for_output(&adoptions, "2");
    served(
        client(&container, "", "127.0.0.1:8081", "crashed"),
        "crashed",
    );
    assert_eq!(stored(&container), "1\n");
    container.ok(&format!("systemctl stop {reexpose}"));
    assert_eq!(
        stored(&container),
        "0\n",
        "stop leaves nothing in the store"
    );
    container.ok(&format!("systemctl start {reexpose}"));

    // 3. The same, socket-activated on 127.0.0.1:8082.
    let activated = "simpletcpunixrelay-activated@8082.service";
    container.ok("systemctl enable --now simpletcpunixrelay-activated@8082.socket");
    assert_eq!(
        container
            .sh(&format!("systemctl is-active {activated}"))
            .stdout
            .trim(),
        "inactive"
    );
    served(
        client(&container, "", "127.0.0.1:8082", "activated"),
        "activated",
    );
    assert_eq!(
        container
            .ok(&format!("systemctl is-active {activated}"))
            .trim(),
        "active"
    );
    // It needs no network of its own: systemd passed the TCP socket.
    assert_ne!(
        container.netns_of_unit(activated),
        container.ok("readlink /proc/1/ns/net").trim()
    );

    // No relay logged a warning or an error; no unit failed.
    for unit in [
        expose,
        "simpletcpunixrelay-reexpose@foobar.service",
        activated,
    ] {
        if kernel_has_landlock() {
            let warnings = container.ok(&format!("journalctl -o cat -p warning -u {unit}"));
            assert_eq!(warnings.trim(), "", "{unit}");
        }
    }
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");

    // An instance without its configuration refuses to start.
    let output = container.sh("systemctl start simpletcpunixrelay-reexpose@nothing.service");
    assert!(!output.status.success());

    // Stopping foobar stops its relay (BindsTo=); the runtime directory goes.
    container.ok("systemctl stop foobar.service");
    assert_eq!(
        container
            .sh(&format!("systemctl is-active {expose}"))
            .stdout
            .trim(),
        "inactive"
    );
    container.ok("test ! -e /run/foobar-unix");
    eprintln!("nspawn test took {:.1?}", started.elapsed());
}

/// A client streaming the file DATA through ADDRESS, paced (PAUSE seconds
/// after each MiB), while it writes the echo into the file COPY (perl-base
/// has no digest; sha256sum compares the files).
const STREAM_PL: &str = include_str!("nspawn/stream.pl");

/// A long-lived ping-pong client on ADDRESS until the file STOP exists:
/// prints how many answers came.
const PINGPONG_PL: &str = include_str!("nspawn/pingpong.pl");

/// New clients on ADDRESS one after another until the file STOP exists
/// and at least MIN have been tried: prints how many were served.
const LOOP_PL: &str = include_str!("nspawn/loop.pl");

/// Runs a staged client in the background, as a transient service of the
/// container's systemd: its output in /tmp/NAME.out, its exit status in
/// /tmp/NAME.rc.
fn background(container: &Container, name: &str, command: &str) {
    container.ok(&format!(
        "systemd-run --quiet --collect --unit=client-{name} sh -c '{command} >/tmp/{name}.out 2>/tmp/{name}.err; echo $? >/tmp/{name}.rc'"
    ));
}

/// Waits for a background client to end; its output, or a panic with its
/// errors if it failed.
fn finished(container: &Container, name: &str) -> String {
    wait_until(&format!("{name} to finish"), || {
        container
            .sh(&format!("test -s /tmp/{name}.rc"))
            .status
            .success()
    });
    let rc = container.ok(&format!("cat /tmp/{name}.rc"));
    let err = container.ok(&format!("cat /tmp/{name}.err"));
    assert_eq!(rc.trim(), "0", "{name} failed: {err}");
    container.ok(&format!("cat /tmp/{name}.out"))
}

/// The main process of a unit, 0 while it has none.
fn main_pid(container: &Container, unit: &str) -> u32 {
    container
        .ok(&format!("systemctl show -p MainPID --value {unit}"))
        .trim()
        .parse()
        .unwrap()
}

/// `systemctl reload UNIT`, then waits until the next instance runs.
fn reload(container: &Container, unit: &str) {
    let before = main_pid(container, unit);
    container.ok(&format!("systemctl reload {unit}"));
    wait_until(&format!("the next instance of {unit}"), || {
        let pid = main_pid(container, unit);
        pid != 0
            && pid != before
            && container
                .ok(&format!("systemctl show -p SubState --value {unit}"))
                .trim()
                == "running"
    });
}

/// Restarting without losing clients, under systemd 252 as PID 1: through
/// expose@ and reexpose@ in a row (TCP 8081 → /run/foobar-unix/socket →
/// foobar's own loopback), `systemctl reload` hands every open connection
/// to the next instance, three times for each unit, while a client streams
/// 64 MiB each way, a ping-pong client keeps asking, a half-closed
/// connection waits for its answer and new clients keep arriving. Then
/// `systemctl restart` and `kill -9` keep the listeners (nobody refused),
/// and `systemctl stop` leaves no socket file and an empty store.
#[test]
fn hand_over_restarts_under_systemd_in_nspawn() {
    let started = Instant::now();
    let Some((container, _stage)) = boot_with_units() else {
        return;
    };
    let expose = "simpletcpunixrelay-expose@foobar.service";
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    container.ok(&format!(
        "systemctl start foobar.service {expose} && systemctl start {reexpose}"
    ));
    let address = "127.0.0.1:8081";
    background(
        &container,
        "pingpong",
        &format!("perl /stage/pingpong.pl {address} /tmp/stop-pingpong"),
    );
    background(
        &container,
        "half",
        &format!("perl /stage/client.pl {address} linger"),
    );
    container.ok("head -c 64M /dev/urandom >/tmp/data");
    background(
        &container,
        "stream",
        &format!("perl /stage/stream.pl {address} /tmp/data 0.1 /tmp/copy"),
    );
    background(
        &container,
        "loop",
        &format!("perl /stage/loop.pl {address} /tmp/stop 200"),
    );
    // Every long-lived client is connected through both relays.
    let active = format!("systemctl show -p StatusText --value {expose}");
    wait_until("three connections through both relays", || {
        let status = container.ok(&active);
        let count = status
            .split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok());
        count.is_some_and(|n| n >= 3)
    });

    for _ in 0..3 {
        reload(&container, reexpose);
        reload(&container, expose);
    }
    for unit in [expose, reexpose] {
        let journal = container.ok(&format!("journalctl -o cat -u {unit}"));
        assert_eq!(
            journal.matches("took over").count(),
            3,
            "{unit}: three hand-overs\n{journal}"
        );
        assert!(
            !journal.contains("draining"),
            "{unit}: no fallback\n{journal}"
        );
        // The store holds the listener again, nothing else.
        container.wait_for_output(
            &format!("systemctl show -p NFileDescriptorStore --value {unit}"),
            "1",
        );
    }
    assert!(
        !container.sh("test -s /tmp/stream.rc").status.success(),
        "the stream must still run after the hand-overs (make it longer)"
    );

    // Every byte, once, in order, both ways.
    finished(&container, "stream");
    let sums = container.ok("sha256sum </tmp/data; sha256sum </tmp/copy; stat -c %s /tmp/copy");
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines[0], lines[1], "64 MiB up and back down: {sums}");
    assert_eq!(lines[2], "67108864", "{sums}");
    // The half-closed connection stayed half-closed, and gets its answer.
    container.ok("touch /tmp/release");
    assert_eq!(
        finished(&container, "half"),
        "hello from foobar\nlingerreleased\n"
    );

    // The socket-activated pair: its listener belongs to the .socket unit,
    // the store holds only the connections.
    let activated = "simpletcpunixrelay-activated@8082.service";
    container.ok("systemctl start simpletcpunixrelay-activated@8082.socket");
    background(
        &container,
        "activated",
        "perl /stage/pingpong.pl 127.0.0.1:8082 /tmp/stop-activated",
    );
    let status = format!("systemctl show -p StatusText --value {activated}");
    wait_until("the ping-pong client through the activated relay", || {
        container.sh(&status).stdout.contains(": 1 active")
    });
    reload(&container, activated);
    container.wait_for_output(
        &format!(
            "journalctl -o cat -u {activated} | grep -c 'took over 1 connection from the previous instance'"
        ),
        "1",
    );
    container.ok("touch /tmp/stop-activated");
    let answered = finished(&container, "activated");
    assert!(answered.starts_with("answered "), "{answered}");

    // The long-lived connection answered all along.
    container.ok("touch /tmp/stop-pingpong");
    let pingpong = finished(&container, "pingpong");
    assert!(pingpong.starts_with("answered "), "{pingpong}");
    eprintln!("ping-pong across six hand-overs: {pingpong}");

    // A planned restart keeps the listeners: nobody is refused, and the
    // loop of new clients goes on meanwhile.
    container.ok(&format!("systemctl restart {reexpose}"));
    container.ok(&format!("systemctl restart {expose}"));
    container.ok("touch /tmp/stop");
    let served = finished(&container, "loop");
    let counts: Vec<u32> = served
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] == counts[1] && counts[1] >= 200,
        "every client served across hand-overs and restarts: {served}{}",
        container.ok("cat /tmp/loop.err")
    );
    // So does a crash (its open connections die with it): a client that
    // arrives while the relay is dead waits in the backlog and is served by
    // the instance Restart=on-failure starts.
    for unit in [reexpose, expose] {
        let pid = main_pid(&container, unit);
        let (code, reply, stderr) = client(
            &container,
            &format!("kill -9 {pid};"),
            address,
            "after-a-crash",
        );
        assert_eq!(code, 0, "{unit}: {stderr}");
        assert_eq!(reply, "hello from foobar\nafter-a-crash");
        assert_ne!(main_pid(&container, unit), pid);
    }

    // Stop: no socket file, an empty store, no unit failed.
    container.ok(&format!("systemctl stop {reexpose} {expose}"));
    container.ok("test ! -e /run/foobar-unix/socket");
    for unit in [expose, reexpose] {
        assert_eq!(
            container
                .ok(&format!(
                    "systemctl show -p NFileDescriptorStore --value {unit}"
                ))
                .trim(),
            "0"
        );
    }
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");
    eprintln!("hand-over test took {:.1?}", started.elapsed());
}

/// The failure paths of `systemctl reload`, under systemd 252 as PID 1,
/// with a ping-pong client through reexpose@ all along:
/// - a typo in the environment file fails the reload with the relay's own
///   message (ExecReload= runs `--check` first), and the running instance
///   and its connection go on untouched;
/// - a drop-in that lowers FileDescriptorStoreMax= below what the hand-over
///   needs: the relay finds out that systemd did not keep everything, takes
///   the connection back and drains it, and the next instance starts;
/// - a restart with another LISTEN closes the stored listener it no longer
///   names (its clients are refused, not left waiting) and leaves only the
///   new one in the store.
#[test]
fn reload_failure_paths_under_systemd_in_nspawn() {
    let Some((container, _stage)) = boot_with_units() else {
        return;
    };
    let expose = "simpletcpunixrelay-expose@foobar.service";
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    let env = "/etc/simpletcpunixrelay/reexpose-foobar.env";
    container.ok(&format!(
        "systemctl start foobar.service {expose} && systemctl start {reexpose}"
    ));
    background(
        &container,
        "pingpong",
        "perl /stage/pingpong.pl 127.0.0.1:8081 /tmp/stop-pingpong",
    );
    let status = format!("systemctl show -p StatusText --value {reexpose}");
    wait_until("the ping-pong client through reexpose@", || {
        container.sh(&status).stdout.contains(": 1 active")
    });

    // 1. A typo: the reload fails, nothing else happens.
    let pid = main_pid(&container, reexpose);
    container.ok(&format!(
        "cp {env} /tmp/good.env && echo 'OPTIONS=--idle-timout 5s' >> {env}"
    ));
    let reloaded = container.sh(&format!("systemctl reload {reexpose}"));
    assert!(
        !reloaded.status.success(),
        "a bad configuration fails the reload"
    );
    let journal = container.ok(&format!("journalctl -o cat -u {reexpose}"));
    assert!(
        journal.contains("usage error: unrecognized argument '--idle-timout'"),
        "the relay's message is in the journal:\n{journal}"
    );
    assert_eq!(
        main_pid(&container, reexpose),
        pid,
        "the same instance runs"
    );
    assert_eq!(
        container
            .ok(&format!("systemctl is-active {reexpose}"))
            .trim(),
        "active"
    );
    assert!(
        container.sh(&status).stdout.contains(": 1 active"),
        "still relaying"
    );
    container.ok(&format!("cp /tmp/good.env {env}"));

    // 2. A store smaller than the hand-over needs (the listener fits, the
    //    connection does not): found out, the connection drains.
    container.ok(&format!(
        "mkdir -p /etc/systemd/system/{reexpose}.d && printf '[Service]\\nFileDescriptorStoreMax=2\\n' > /etc/systemd/system/{reexpose}.d/small.conf && systemctl daemon-reload"
    ));
    container.ok(&format!("systemctl reload {reexpose}"));
    container.wait_for_output(
        &format!("journalctl -o cat -u {reexpose} | grep -c 'systemd did not keep them all'"),
        "1",
    );
    assert_eq!(
        main_pid(&container, reexpose),
        pid,
        "draining, not gone yet"
    );
    container.ok("touch /tmp/stop-pingpong");
    let pingpong = finished(&container, "pingpong");
    assert!(pingpong.starts_with("answered "), "{pingpong}");
    wait_until("the next instance of reexpose@", || {
        let now = main_pid(&container, reexpose);
        now != 0 && now != pid
    });
    container.wait_for_output(
        &format!("systemctl show -p NFileDescriptorStore --value {reexpose}"),
        "1",
    );
    container.ok(&format!(
        "rm -r /etc/systemd/system/{reexpose}.d && systemctl daemon-reload"
    ));

    // 3. Another LISTEN: the stored listener for 8081 is closed, not kept
    //    unserved.
    container.ok(&format!(
        "sed -i s/8081/8083/ {env} && systemctl restart {reexpose}"
    ));
    let journal = container.ok(&format!("journalctl -o cat -u {reexpose}"));
    assert!(
        journal.contains("closed 1 stored listener that LISTEN no longer names"),
        "{journal}"
    );
    let (code, _, stderr) = client(&container, "", "127.0.0.1:8081", "stale");
    assert_ne!(code, 0, "8081 refuses instead of hanging: {stderr}");
    let (code, reply, stderr) = client(&container, "", "127.0.0.1:8083", "new");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reply, "hello from foobar\nnew");
    assert_eq!(
        container
            .ok(&format!(
                "systemctl show -p NFileDescriptorStore --value {reexpose}"
            ))
            .trim(),
        "1"
    );
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");
}

/// The package `packaging/build-deb` wrote (CI builds it before the tests).
fn built_package() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
}

/// Upgrading the Debian package hands every running relay over to the new
/// binary (postinst reloads the running instances): under systemd 252 in
/// nspawn, with the package installed by dpkg, a ping-pong connection
/// through reexpose@ and expose@ goes on answering across `dpkg -i` of the
/// package again (an upgrade as far as the maintainer scripts can tell).
#[test]
fn a_package_upgrade_hands_over_under_systemd_in_nspawn() {
    let Some(root) = nspawn_root() else {
        return;
    };
    let Some(package) = built_package() else {
        skip("no package in target/debian (run packaging/build-deb first)");
        return;
    };
    let stage = TempDir::new();
    fs::copy(&package, stage.join("package.deb")).unwrap();
    fs::write(stage.join("foobar.service"), FOOBAR_UNIT).unwrap();
    fs::write(stage.join("foobar.pl"), FOOBAR_PL).unwrap();
    fs::write(stage.join("pingpong.pl"), PINGPONG_PL).unwrap();
    let container = Container::boot(&root, &[(&stage.0, "/stage")], stage.join("console.log"));
    container.ok(include_str!("nspawn/install-package.sh"));
    let expose = "simpletcpunixrelay-expose@foobar.service";
    let reexpose = "simpletcpunixrelay-reexpose@foobar.service";
    background(
        &container,
        "pingpong",
        "perl /stage/pingpong.pl 127.0.0.1:8081 /tmp/stop",
    );
    let status = format!("systemctl show -p StatusText --value {reexpose}");
    wait_until("the ping-pong client through both relays", || {
        container.ok(&status).contains(": 1 active")
    });
    let before = (main_pid(&container, expose), main_pid(&container, reexpose));

    container.ok("dpkg -i /stage/package.deb >/dev/null");
    for (unit, pid) in [(expose, before.0), (reexpose, before.1)] {
        wait_until(&format!("{unit} to be handed over"), || {
            let now = main_pid(&container, unit);
            now != 0
                && now != pid
                && container
                    .ok(&format!("journalctl -o cat -u {unit}"))
                    .contains("took over 1 connection from the previous instance")
        });
    }
    container.ok("touch /tmp/stop");
    let answered = finished(&container, "pingpong");
    assert!(answered.starts_with("answered "), "{answered}");
    assert_eq!(container.ok("systemctl --failed --no-legend").trim(), "");
}
