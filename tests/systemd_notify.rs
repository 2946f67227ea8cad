//! systemd notifications, end to end on a real `NOTIFY_SOCKET`: READY=1 once
//! the listener accepts, STATUS= with the connection counts, STOPPING=1 on
//! SIGTERM, and WATCHDOG=1 while the data path works.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

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
    relay.signal(Signal::TERM);
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

/// A stop never hangs on a stuck engine: once the drain gives up (its
/// timeout, or a second signal), the engine is given half a second to cut
/// its connections; then the relay ends with status 1 and one error line,
/// so that its supervisor can tell it was sick.
#[test]
fn a_stuck_engine_does_not_hold_a_stop() {
    for (timeout, signals) in [("1s", 1), ("1h", 2)] {
        let backend = Backend::tcp(echo);
        let mut command = command(&[
            "--shutdown-timeout",
            timeout,
            "127.0.0.1:0",
            &backend.connect_arg,
        ]);
        command.env("SIMPLETCPUNIXRELAY_TEST_ENGINE", "hang");
        let mut relay = Relay::start_command(command, 1);
        let _client = std::net::TcpStream::connect(relay.address()).unwrap();
        wait_until("the connection to reach the engine", || {
            backend.connections() == 1
        });
        relay.signal(Signal::TERM);
        if signals == 2 {
            relay.wait_for_line("stopping: waiting up to");
            relay.signal(Signal::TERM);
        }
        let status = relay.wait_exit_within(Duration::from_secs(5));
        let log = relay.log();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{timeout}: {log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(errors.len(), 1, "{timeout}: {log}");
        assert!(
            errors[0].contains("the relay engine cannot cut its connections"),
            "{timeout}: {log}"
        );
    }
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
