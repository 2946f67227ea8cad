//! Faults in how supervisors talk to the relay: every form of
//! `NOTIFY_SOCKET` a service manager may hand it (an abstract name `@…`
//! included, with the sandbox on or off) gets its `READY=1`, and the signals
//! a terminal or a stray `kill` sends (SIGHUP) neither kill the relay nor
//! leave its socket file behind.

mod common;
use common::*;

use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the relay may take to notify or to answer after a signal.
const QUICK: Duration = Duration::from_secs(5);

/// A service manager's notification socket bound to an abstract name.
struct AbstractNotifySocket {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`: `@name`.
    env: String,
}

impl AbstractNotifySocket {
    fn bind() -> AbstractNotifySocket {
        let name = unique_name("notify");
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        AbstractNotifySocket {
            socket,
            env: format!("@{name}"),
        }
    }

    /// Waits up to [`QUICK`] for a message with the line `line`; returns
    /// every message received meanwhile.
    fn wait_for_line(&self, line: &str) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + QUICK;
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(seen);
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buffer) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    if message.lines().any(|l| l == line) {
                        return Ok(message);
                    }
                    seen.push(message);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(seen);
                }
                Err(e) => panic!("recv on the notification socket: {e}"),
            }
        }
    }
}

/// Starts a relay with `args` notifying `notify`, and asserts that `READY=1`
/// arrives.
fn assert_ready_arrives(notify: &AbstractNotifySocket, args: &[&str]) {
    let mut relay_command: Command = command(args);
    relay_command.env("NOTIFY_SOCKET", &notify.env);
    let relay = Relay::start_command(relay_command, 1);
    if let Err(seen) = notify.wait_for_line("READY=1") {
        panic!(
            "no READY=1 on NOTIFY_SOCKET={} within {QUICK:?} (got {seen:?}); log:\n{}",
            notify.env,
            relay.log()
        );
    }
}

#[test]
fn ready_reaches_an_abstract_notify_socket_with_the_default_sandbox() {
    let notify = AbstractNotifySocket::bind();
    let backend = Backend::tcp(echo);
    assert_ready_arrives(&notify, &["127.0.0.1:0", &backend.connect_arg]);
}

#[test]
fn ready_reaches_an_abstract_notify_socket_with_the_sandbox_off() {
    let notify = AbstractNotifySocket::bind();
    let backend = Backend::tcp(echo);
    assert_ready_arrives(
        &notify,
        &["--sandbox", "off", "127.0.0.1:0", &backend.connect_arg],
    );
}

/// Sends a line through the relay at `address` and asserts it is echoed.
fn assert_relayed(relay: &Relay, text: &str) {
    let conn = try_connect(relay.address())
        .unwrap_or_else(|e| panic!("connect to {}: {e}; log:\n{}", relay.address(), relay.log()));
    conn.set_read_timeout(Some(QUICK));
    assert_eq!(exchange(conn, text.as_bytes().to_vec()), text.as_bytes());
}

/// A relay on a Unix socket file in `dir` to an echo backend, that has
/// relayed one client already.
fn unix_relay(dir: &TempDir, backend: &Backend) -> Relay {
    let relay = Relay::start(&[&dir.arg("relay.sock"), &backend.connect_arg]);
    assert_relayed(&relay, "before SIGHUP\n");
    relay
}

#[test]
fn sighup_is_logged_and_the_relay_goes_on_serving() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut relay = unix_relay(&dir, &backend);

    relay.signal(Signal::HUP);

    relay.wait_for_line("SIGHUP");
    assert!(relay.running(), "the relay must survive SIGHUP");
    assert!(dir.join("relay.sock").exists(), "the socket file must stay");
    assert_relayed(&relay, "after SIGHUP\n");
}

#[test]
fn sigterm_after_sighup_still_exits_0_and_removes_the_socket_file() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut relay = unix_relay(&dir, &backend);
    relay.signal(Signal::HUP);
    relay.wait_for_line("SIGHUP");

    relay.signal(Signal::TERM);

    let status = relay
        .wait_exit_within(QUICK)
        .unwrap_or_else(|| panic!("no exit within {QUICK:?} of SIGTERM; log:\n{}", relay.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", relay.log());
    assert!(
        !dir.join("relay.sock").exists(),
        "the socket file must be removed at exit"
    );
}
