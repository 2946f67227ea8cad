//! systemd integration, end to end: notifications on a real `NOTIFY_SOCKET`,
//! socket activation through `systemd-socket-activate`, journal-style logs,
//! the unit templates in `systemd/` (`systemd-analyze verify` and exposure
//! scores), `PrivateNetwork=` emulated with a network namespace, and the real
//! thing: the units under systemd as PID 1 in `systemd-nspawn`.
//!
//! A test that needs a tool or a privilege this machine lacks prints
//! `skipped: REASON` and passes.

// The harness is shared by every test binary; this one uses only a part.
#[allow(unused_imports)]
mod common;

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{DEADLINE, Relay, TempDir, relay_bin};

/// Prints why a test does not run here, and ends it.
macro_rules! skip {
    ($($reason:tt)*) => {{
        eprintln!("skipped: {}", format_args!($($reason)*));
        return;
    }};
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The full path of a program, searched in `PATH` and the sbin directories
/// (which a non-root `PATH` often lacks).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The first of `names` that is not installed.
fn missing_tool(names: &[&'static str]) -> Option<&'static str> {
    names.iter().copied().find(|n| tool(n).is_none())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the kernel offers Landlock (the relay then confines itself fully).
fn kernel_has_landlock() -> bool {
    fs::read_to_string("/sys/kernel/security/lsm").is_ok_and(|l| l.contains("landlock"))
}

/// A TCP port that was free a moment ago (`systemd-socket-activate` cannot
/// listen on port 0 and report the port).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to its end (killing it after [`DEADLINE`]).
fn run(command: Command) -> Output {
    run_with_stdin(command, Stdio::null())
}

/// Like [`run`], with standard input from `stdin`.
fn run_with_stdin(mut command: Command, stdin: Stdio) -> Output {
    command.stdin(stdin);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("spawn");
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if finished.recv_timeout(DEADLINE).is_err() {
        // SAFETY: kill with the pid of our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    waiter.join().unwrap().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A byte stream of either kind, for [`round_trip`].
trait Stream: Read + Write + Send + 'static {
    fn duplicate(&self) -> Self;
    fn end_writing(&self);
}

impl Stream for TcpStream {
    fn duplicate(&self) -> Self {
        self.try_clone().unwrap()
    }
    fn end_writing(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

impl Stream for UnixStream {
    fn duplicate(&self) -> Self {
        self.try_clone().unwrap()
    }
    fn end_writing(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

/// Sends `data`, half-closes, and returns everything read until EOF.
fn round_trip<S: Stream>(mut stream: S, data: &[u8]) -> Vec<u8> {
    let mut writer = stream.duplicate();
    let data = data.to_vec();
    let sender = thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.end_writing();
    });
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read until EOF");
    sender.join().unwrap();
    reply
}

/// A TCP backend on `listener`: greets each client with `greeting`, then
/// echoes every byte until the client's EOF, then half-closes.
struct Echo {
    /// Its address, as CONNECT.
    address: String,
    accepted: Arc<AtomicUsize>,
}

impl Echo {
    fn on(listener: TcpListener, greeting: &'static str) -> Echo {
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let _ = stream.write_all(greeting.as_bytes());
                    let mut buffer = [0u8; 65536];
                    while let Ok(n @ 1..) = stream.read(&mut buffer) {
                        if stream.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        Echo { address, accepted }
    }

    /// An echo backend on a fresh loopback port.
    fn start() -> Echo {
        Echo::on(TcpListener::bind("127.0.0.1:0").unwrap(), "")
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Deterministic bytes, distinct per seed.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// The `NOTIFY_SOCKET` of a service manager: a datagram socket this test
/// binds, recording every message the relay sends and when it arrived.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<(Instant, String)>,
    _dir: TempDir,
}

impl Notifications {
    fn new() -> Notifications {
        let dir = TempDir::new();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notifications {
            socket,
            path,
            received: Vec::new(),
            _dir: dir,
        }
    }

    /// The next message within `limit`.
    fn next(&mut self, limit: Duration) -> Option<String> {
        let limit = limit.max(Duration::from_millis(1));
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buffer = [0u8; 4096];
        match self.socket.recv(&mut buffer) {
            Ok(n) => {
                let message = text(&buffer[..n]);
                self.received.push((Instant::now(), message.clone()));
                Some(message)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("recv on NOTIFY_SOCKET: {e}"),
        }
    }

    /// The first message within `limit` that `wanted` accepts.
    fn wait_within(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next(left) {
                Some(message) if wanted(&message) => return Some(message),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// The first message with the line `line` (`READY=1`), within [`DEADLINE`].
    fn wait_for(&mut self, line: &str) -> String {
        self.wait_within(DEADLINE, |m| has_line(m, line))
            .unwrap_or_else(|| panic!("no {line} within {DEADLINE:?}; got {:?}", self.received))
    }

    /// How many messages so far carry the line `line`.
    fn count(&self, line: &str) -> usize {
        self.received
            .iter()
            .filter(|(_, m)| has_line(m, line))
            .count()
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// The `STATUS=` text of a notification, if it has one.
fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// A relay command that notifies `notifications`.
fn notifying(notifications: &Notifications, args: &[&str]) -> Command {
    let mut command = common::command(args);
    command.env("NOTIFY_SOCKET", &notifications.path);
    command
}

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

// ---------------------------------------------------------------------------
// Readiness, status, stopping, watchdog
// ---------------------------------------------------------------------------

/// READY=1 comes only once the listener accepts: a client that connects the
/// moment it arrives is served. The socket path is known in advance, so the
/// test does not wait for the `listening on` line first.
#[test]
fn ready_only_once_the_listener_accepts() {
    let backend = Echo::start();
    for round in 0..3u8 {
        let dir = TempDir::new();
        let socket = dir.join("relay.sock");
        let log = dir.join("relay.log");
        let mut notifications = Notifications::new();
        let mut command = notifying(&notifications, &[&dir.arg("relay.sock"), &backend.address]);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap());
        let _relay = Guard(command.spawn().expect("spawn relay"));

        let ready = notifications.wait_for("READY=1");
        let client = UnixStream::connect(&socket).expect("connect as soon as READY=1 came");
        let data = payload(100_000, round);
        assert_eq!(round_trip(client, &data), data);

        let status = status_of(&ready).expect("READY=1 comes with a STATUS=");
        assert!(status.contains("0 active, 0 total"), "{status}");
        assert!(status.contains(&backend.address), "{status}");
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
fn open_connection(address: &str) -> TcpStream {
    let mut client = TcpStream::connect(address).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.write_all(b"x").unwrap();
    let mut echoed = [0u8; 1];
    client.read_exact(&mut echoed).unwrap();
    client
}

/// How long STATUS= may take to follow a change: it is throttled to about
/// once a second.
const STATUS_LAG: Duration = Duration::from_millis(2500);

/// STATUS= follows the connection counts, only when they change, at most
/// about once a second.
#[test]
fn status_tells_active_and_total_connections() {
    let backend = Echo::start();
    let mut notifications = Notifications::new();
    let relay = Relay::start_command(
        notifying(&notifications, &["127.0.0.1:0", &backend.address]),
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
        let client = TcpStream::connect(relay.address()).unwrap();
        assert_eq!(round_trip(client, b"burst"), b"burst");
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
    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip!("{t} not installed (package systemd)");
    }
    let backend = Echo::start();
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
                &backend.address,
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
    let backend = Echo::start();
    let mut notifications = Notifications::new();
    let mut relay = Relay::start_command(
        notifying(&notifications, &["127.0.0.1:0", &backend.address]),
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
fn watched(notifications: &Notifications, backend: &Echo, pid: Option<u32>) -> Command {
    let mut command = Command::new("sh");
    let pid = pid.map_or("$$".to_string(), |p| p.to_string());
    command
        .arg("-c")
        .arg(format!("WATCHDOG_PID={pid} exec \"$0\" \"$@\""))
        .arg(relay_bin())
        .args(["127.0.0.1:0", &backend.address])
        .env("NOTIFY_SOCKET", &notifications.path)
        .env("WATCHDOG_USEC", "200000");
    command
}

/// WATCHDOG_USEC=200ms for this process: WATCHDOG=1 every 100 ms or so.
#[test]
fn watchdog_keepalives_when_asked() {
    let backend = Echo::start();
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

/// WATCHDOG_PID naming another process: the watchdog is not ours to feed.
#[test]
fn no_watchdog_for_another_pid() {
    let backend = Echo::start();
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
    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip!("{t} not installed (package systemd)");
    }
    let backend = Echo::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let relay_path = relay_bin();
    let mut relay = start_activator(
        &[
            "-l",
            &listen,
            relay_path.to_str().unwrap(),
            "sd-listen",
            &backend.address,
        ],
        1,
    );
    // The first client starts the relay; it is served like every other.
    let data = payload(200_000, 1);
    assert_eq!(
        round_trip(TcpStream::connect(&listen).unwrap(), &data),
        data
    );
    assert!(relay.wait_for_line("listening on ").ends_with(&listen));
    assert_eq!(
        round_trip(TcpStream::connect(&listen).unwrap(), b"second"),
        b"second"
    );
    assert_eq!(backend.connections(), 2);
    relay.signal(libc::SIGTERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
}

/// `sd-listen:b` with two passed sockets named a (TCP) and b (Unix) serves b
/// only; a is left alone (its clients wait in the backlog, unanswered).
#[test]
fn sd_listen_by_name_serves_only_that_socket() {
    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip!("{t} not installed (package systemd)");
    }
    let backend = Echo::start();
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
            &backend.address,
        ],
        2,
    );
    let data = payload(50_000, 2);
    assert_eq!(round_trip(UnixStream::connect(&unix).unwrap(), &data), data);
    assert!(relay.wait_for_line("listening on ").ends_with(&unix));
    assert_eq!(backend.connections(), 1);

    let mut ignored = TcpStream::connect(&tcp).expect("a is still listening (backlog)");
    ignored.write_all(b"anyone?").unwrap();
    ignored
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buffer = [0u8; 16];
    match ignored.read(&mut buffer) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("socket a must not be served, read gave {other:?}"),
    }
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
    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip!("{t} not installed (package systemd)");
    }
    let backend = Echo::start();
    let relay_path = relay_bin();
    for (seed, listen) in [(3u8, "sd-listen"), (4, "fd:3")] {
        let address = format!("127.0.0.1:{}", free_port());
        let mut activator = start_activator(
            &[
                "-a",
                "-l",
                &address,
                relay_path.to_str().unwrap(),
                listen,
                &backend.address,
            ],
            1,
        );
        let before = backend.connections();
        let data = payload(300_000, seed);
        assert_eq!(
            round_trip(TcpStream::connect(&address).unwrap(), &data),
            data,
            "{listen}"
        );
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
/// with nothing passed, `fd:N` on a file, and, under socket activation,
/// `sd-listen:NAME` matching no socket and `fd:3` on a datagram socket.
/// Nothing is removed.
#[test]
fn activation_misuse_is_a_usage_error() {
    let backend = Echo::start();

    let mut alone = common::command(&["sd-listen", &backend.address]);
    for variable in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        alone.env_remove(variable);
    }
    let output = run(alone);
    let stderr = text(&output.stderr);
    assert_usage_error(
        output.status,
        &stderr,
        "sd-listen",
        "no sockets were passed",
    );

    let on_a_file = common::command(&["fd:0", &backend.address]);
    let output = run_with_stdin(on_a_file, File::open(file!()).unwrap().into());
    let stderr = text(&output.stderr);
    assert_usage_error(output.status, &stderr, "fd:0", "not a socket");

    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip!("{t} not installed (package systemd): activated misuse not checked");
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
            &backend.address,
        ],
        1,
    );
    let _client = UnixStream::connect(&named).unwrap(); // starts the relay
    let (status, log) = activator.finish();
    assert_usage_error(status, &log, "sd-listen:nomatch", "FileDescriptorName");
    let kept = fs::symlink_metadata(&named).expect("the passed socket file is not removed");
    assert!(kept.file_type().is_socket());

    let udp = format!("127.0.0.1:{}", free_port());
    let mut activator = start_activator(&["-d", "-l", &udp, relay, "fd:3", &backend.address], 1);
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
    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip!("{t} not installed (package systemd)");
    }
    let backend = Echo::start();
    let dir = TempDir::new();
    let path = dir.arg("inherited.sock");
    let relay_path = relay_bin();
    let mut relay = start_activator(
        &[
            "-l",
            &path,
            relay_path.to_str().unwrap(),
            "sd-listen",
            &backend.address,
        ],
        1,
    );
    assert_eq!(
        round_trip(UnixStream::connect(&path).unwrap(), b"hello"),
        b"hello"
    );
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
    let mut command = common::command(args);
    command.env_remove("JOURNAL_STREAM");
    if let Some(journal) = journal {
        command.env("JOURNAL_STREAM", journal(meta.dev(), meta.ino()));
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    let mut child = Guard(command.spawn().expect("spawn relay"));
    if stop {
        let deadline = Instant::now() + DEADLINE;
        while !fs::read_to_string(&path).unwrap().contains("listening on") {
            assert!(
                Instant::now() < deadline,
                "no listening line: {}",
                fs::read_to_string(&path).unwrap()
            );
            assert!(child.0.try_wait().unwrap().is_none(), "the relay exited");
            thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: kill with the pid of our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    }
    let status = common::wait_exit(&mut child.0, DEADLINE).expect("the relay exits");
    let lines = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
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
    let backend = Echo::start();
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let args = ["-v", socket.as_str(), backend.address.as_str()];

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
    let backend = Echo::start();
    let dir = TempDir::new();
    let missing_dir = dir.arg("missing/relay.sock");
    let cases: [(&[&str], i32); 2] = [
        (&[missing_dir.as_str(), backend.address.as_str()], 1),
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

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

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
    if let Some(t) = missing_tool(&["systemd-analyze"]) {
        skip!("{t} not installed (package systemd)");
    }
    let elsewhere = TempDir::new();
    let mut command = Command::new(unit_dir().join("check-units"));
    command.current_dir(&elsewhere.0);
    let output = run(command);
    let table = text(&output.stdout);
    eprintln!("{table}{}", text(&output.stderr));
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
        let mut command = Command::new(tool("systemd-analyze").unwrap());
        command
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit_dir().join(&template))
            .current_dir(&elsewhere.0);
        let output = text(&run(command).stdout);
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
    if let Some(t) = missing_tool(&["systemd-analyze"]) {
        skip!("{t} not installed (package systemd)");
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
    let mut command = Command::new(unit_dir().join("check-units"));
    command.arg(&copy.0).current_dir(&copy.0);
    let output = run(command);
    let report = text(&output.stdout);
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

/// The network namespace of a process, as `net:[INODE]`.
fn netns_of(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Runs `make` on a thread that has joined the network namespace `ns`:
/// sockets it creates belong to that namespace for good.
fn in_netns<T: Send + 'static>(ns: &str, make: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(ns).expect("open the namespace");
    thread::spawn(move || {
        // SAFETY: setns on an open namespace descriptor; it changes the
        // network namespace of this short-lived thread only.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        make()
    })
    .join()
    .unwrap()
}

/// What `PrivateNetwork=yes` + `JoinsNamespaceOf=` do, by hand: a TCP-only
/// backend on the loopback of its own network namespace, the relay inside
/// the same namespace listening on a Unix socket, and a client outside that
/// reaches the backend through the socket, and not over TCP.
#[test]
fn private_network_service_exposed_through_a_unix_socket() {
    if !is_root() {
        skip!("needs root to create network namespaces");
    }
    if let Some(t) = missing_tool(&["unshare", "nsenter", "ip"]) {
        skip!("{t} not installed (packages util-linux, iproute2)");
    }
    // The namespace lives as long as this process sleeps in it.
    let pin = Guard(
        Command::new(tool("unshare").unwrap())
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ours = netns_of(std::process::id());
    common::wait_until("the new network namespace", || {
        let theirs = netns_of(pin.0.id());
        !theirs.is_empty() && theirs != ours
    });
    let namespace = netns_of(pin.0.id());
    let ns = format!("/proc/{}/ns/net", pin.0.id());
    let mut lo_up = Command::new(tool("nsenter").unwrap());
    lo_up
        .arg(format!("--net={ns}"))
        .args(["ip", "link", "set", "lo", "up"]);
    let output = run(lo_up);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let listener = in_netns(&ns, || TcpListener::bind("127.0.0.1:0").unwrap());
    let backend = Echo::on(listener, "hello from the namespace\n");

    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let mut command = Command::new(tool("nsenter").unwrap());
    command
        .arg(format!("--net={ns}"))
        .arg(relay_bin())
        .args([&socket, &backend.address]);
    let mut relay = Relay::start_command(command, 1);
    assert_eq!(relay.address(), socket);
    assert_eq!(netns_of(relay.pid() as u32), namespace);

    let data = payload(500_000, 5);
    let reply = round_trip(UnixStream::connect(&socket).unwrap(), &data);
    let greeting = b"hello from the namespace\n";
    assert_eq!(&reply[..greeting.len()], greeting);
    assert!(reply[greeting.len()..] == data[..], "payload altered");
    assert_eq!(backend.connections(), 1);

    // From outside, the backend's port is nobody's, or someone else's.
    if let Ok(stranger) = TcpStream::connect(&backend.address) {
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

/// Where the Debian root file system for the container is kept between runs.
const ROOTFS: &str = "/var/cache/simpletcpunixrelay-test-rootfs";
/// How it is made; a cache made another way is rebuilt.
const ROOTFS_PACKAGES: &str = "--variant=minbase --include=systemd";
/// Written inside the root file system once it is complete.
const ROOTFS_MARKER: &str = ".simpletcpunixrelay-test-rootfs";

/// The running system's Debian suite and the mirror apt uses for it.
fn apt_suite_and_mirror() -> Result<(String, String), String> {
    let os = fs::read_to_string("/etc/os-release").map_err(|e| format!("os-release: {e}"))?;
    let field = |name: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    if field("ID").as_deref() != Some("debian") {
        return Err("the host is not Debian".into());
    }
    let suite = field("VERSION_CODENAME").ok_or("no VERSION_CODENAME in os-release")?;
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        sources.extend(more);
    }
    for source in sources {
        let Ok(content) = fs::read_to_string(&source) else {
            continue;
        };
        let name = source.to_string_lossy();
        if name.ends_with(".list") {
            // deb [OPTION=VALUE ...] URI SUITE COMPONENTS...
            for line in content.lines() {
                let Some(rest) = line.trim().strip_prefix("deb ") else {
                    continue;
                };
                let rest = match rest.trim_start().strip_prefix('[') {
                    Some(options) => options.split_once(']').map_or("", |(_, r)| r),
                    None => rest,
                };
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words.len() >= 2 && words[1] == suite {
                    return Ok((suite, words[0].to_string()));
                }
            }
        } else if name.ends_with(".sources") {
            // deb822 stanzas: Types, URIs, Suites, Enabled.
            for stanza in content.split("\n\n") {
                let value = |key: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{key}:")))
                        .map(str::trim)
                        .unwrap_or("")
                };
                if value("Enabled") == "no"
                    || !value("Types").split_whitespace().any(|t| t == "deb")
                {
                    continue;
                }
                if value("Suites").split_whitespace().any(|s| s == suite)
                    && let Some(uri) = value("URIs").split_whitespace().next()
                {
                    return Ok((suite, uri.to_string()));
                }
            }
        }
    }
    Err(format!("no apt source for {suite}"))
}

/// Holds an exclusive `flock` on a file while alive.
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &str) -> Result<FileLock, String> {
        let file = File::create(path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: flock on a descriptor we own; blocks until it is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("flock {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(FileLock { _file: file })
    }
}

/// A minimal Debian root file system with systemd, built once with
/// debootstrap from the host's mirror and kept in [`ROOTFS`].
fn debian_rootfs() -> Result<PathBuf, String> {
    let root = PathBuf::from(ROOTFS);
    let (suite, mirror) = apt_suite_and_mirror()?;
    let recipe = format!("debootstrap {ROOTFS_PACKAGES} {suite} {mirror}\n");
    let complete =
        || fs::read_to_string(root.join(ROOTFS_MARKER)).ok().as_deref() == Some(recipe.as_str());
    if complete() {
        return Ok(root);
    }
    // Another test run may be building it right now.
    let _lock = FileLock::acquire(&format!("{ROOTFS}.lock"))?;
    if complete() {
        return Ok(root);
    }
    let build = PathBuf::from(format!("{ROOTFS}.build"));
    let log_path = format!("{ROOTFS}.log");
    let _ = fs::remove_dir_all(&build);
    let log = File::create(&log_path).map_err(|e| format!("{log_path}: {e}"))?;
    eprintln!("building {ROOTFS} ({recipe}) ...");
    let started = Instant::now();
    // `timeout` ends debootstrap and everything it started.
    let status = Command::new(tool("timeout").ok_or("timeout not installed")?)
        .arg("150")
        .arg(tool("debootstrap").ok_or("debootstrap not installed")?)
        .args(ROOTFS_PACKAGES.split(' '))
        .arg(&suite)
        .arg(&build)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .map_err(|e| format!("debootstrap: {e}"))?;
    if !status.success() {
        let _ = fs::remove_dir_all(&build);
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(format!("debootstrap {status}; {log_path} ends: {tail:?}"));
    }
    fs::write(build.join(ROOTFS_MARKER), &recipe).map_err(|e| e.to_string())?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&build, &root).map_err(|e| format!("rename to {ROOTFS}: {e}"))?;
    eprintln!("built {ROOTFS} in {:.0?}", started.elapsed());
    Ok(root)
}

/// A booted container, stopped (and killed if need be) on drop.
struct Container {
    nspawn: Child,
    /// The container's PID 1 (systemd), as the host sees it.
    init: i32,
    console: PathBuf,
}

impl Container {
    /// Boots `root` with systemd as PID 1 and waits until it runs. The root
    /// stays untouched (a tmpfs overlay takes every write); `binds` are
    /// `(host path, container path)` pairs mounted read-only.
    fn boot(root: &Path, binds: &[(&Path, &str)], console: PathBuf) -> Container {
        let mut command = Command::new(tool("systemd-nspawn").unwrap());
        command
            .arg("--directory")
            .arg(root)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                // Without it, loopback stays down in the services' own
                // network namespaces.
                "--private-network",
                "--link-journal=no",
                "--console=pipe",
                "--volatile=overlay",
                // bpf: IPAddressDeny= needs it; landlock_*: the relay's
                // own sandbox, which the units allow.
                "--system-call-filter=bpf landlock_create_ruleset landlock_add_rule landlock_restrict_self",
            ])
            .args(
                binds
                    .iter()
                    .map(|(host, inside)| format!("--bind-ro={}:{inside}", host.display())),
            )
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&console).unwrap())
            .stderr(File::create(&console).unwrap());
        for variable in [
            "NOTIFY_SOCKET",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
        ] {
            command.env_remove(variable);
        }
        let nspawn = command.spawn().expect("spawn systemd-nspawn");
        let mut container = Container {
            init: 0,
            nspawn,
            console,
        };
        // PID 1 of the container is nspawn's child once it runs systemd.
        let nspawn_pid = container.nspawn.id();
        let deadline = Instant::now() + DEADLINE;
        while container.init == 0 {
            if let Some(status) = container.nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn exited ({status}):\n{}", container.console());
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container:\n{}",
                container.console()
            );
            let children =
                fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
                    .unwrap_or_default();
            container.init = children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|p| {
                    fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                })
                .unwrap_or(0);
            thread::sleep(Duration::from_millis(10));
        }
        // Until systemd listens on its private socket, systemctl fails at once.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let state = container.sh("systemctl is-system-running --wait");
            let stdout = text(&state.stdout);
            if matches!(stdout.trim(), "running" | "degraded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot: {stdout}{}\n{}",
                text(&state.stderr),
                container.console()
            );
            thread::sleep(Duration::from_millis(20));
        }
        container
    }

    fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Runs a shell script in the container, in all of PID 1's namespaces
    /// (so outside every service's), with a clean environment.
    fn sh(&self, script: &str) -> Output {
        let mut command = Command::new(tool("nsenter").unwrap());
        command
            .args(["-t", &self.init.to_string(), "-a"])
            .args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["sh", "-c", script]);
        run(command)
    }

    /// Runs a script that must succeed; returns its standard output.
    fn ok(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "in the container: {script}\n{}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// Polls `script` until it prints `wanted` (trimmed).
    fn wait_for_output(&self, script: &str, wanted: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = text(&self.sh(script).stdout);
            if got.trim() == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{script}: {got:?}, not {wanted:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client in the container: sends `message` to `address` (a socket
    /// path or HOST:PORT) and returns the exit code, the reply and stderr.
    fn client(&self, prefix: &str, address: &str, message: &str) -> (i32, String, String) {
        let output = self.sh(&format!(
            "{prefix} perl /stage/client.pl {address} {message}"
        ));
        (
            output.status.code().unwrap_or(-1),
            text(&output.stdout),
            text(&output.stderr),
        )
    }

    /// The network namespace of a unit's main process.
    fn netns_of_unit(&self, unit: &str) -> String {
        self.ok(&format!(
            "readlink /proc/$(systemctl show -p MainPID --value {unit})/ns/net"
        ))
        .trim()
        .to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if thread::panicking() && self.init != 0 {
            let journal = self.sh("journalctl --no-pager -n 150");
            eprintln!("container journal:\n{}", text(&journal.stdout));
        }
        // SIGTERM asks nspawn to shut the container down cleanly.
        // SAFETY: kill with the pid of our own child, not reaped yet.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        if common::wait_exit(&mut self.nspawn, Duration::from_secs(15)).is_none() {
            if self.init != 0 {
                // SAFETY: the container's PID 1; killing it ends the container.
                unsafe { libc::kill(self.init, libc::SIGKILL) };
            }
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

/// foobar.service in the container: TCP only, on its own loopback.
const FOOBAR_UNIT: &str = "\
[Unit]
Description=foobar: a TCP-only service on its own loopback

[Service]
Type=notify
ExecStart=/usr/bin/perl /stage/foobar.pl
PrivateNetwork=yes
";

/// foobar itself (perl is in every Debian): greets, then echoes.
const FOOBAR_PL: &str = r#"use strict; use warnings;
use IO::Socket::INET; use IO::Socket::UNIX; use Socket;
my $server = IO::Socket::INET->new(LocalAddr => "127.0.0.1:8080", Listen => 64, ReuseAddr => 1)
    or die "listen on 127.0.0.1:8080: $!";
if (my $path = $ENV{NOTIFY_SOCKET}) {
    my $notify = IO::Socket::UNIX->new(Type => SOCK_DGRAM, Peer => $path) or die "notify: $!";
    $notify->send("READY=1");
}
$SIG{CHLD} = "IGNORE";
while (1) {
    my $client = $server->accept or next;
    if (fork() == 0) {
        syswrite $client, "hello from foobar\n";
        while (sysread($client, my $buffer, 65536)) { syswrite $client, $buffer }
        exit 0;
    }
    close $client;
}
"#;

/// The client: sends its message, half-closes, prints the reply; exit 3 if
/// it cannot connect.
const CLIENT_PL: &str = r#"use strict; use warnings;
use IO::Socket::INET; use IO::Socket::UNIX; use Socket;
my ($address, $message) = @ARGV;
my $socket = $address =~ m{/}
    ? IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $address)
    : IO::Socket::INET->new(PeerAddr => $address, Timeout => 5);
$socket or do { print STDERR "connect $address: $!\n"; exit 3 };
syswrite $socket, $message;
shutdown $socket, 1;
my $reply = "";
while (sysread($socket, my $buffer, 65536)) { $reply .= $buffer }
print $reply;
"#;

/// Installs the units the way the README says, with the configuration the
/// README shows.
const INSTALL: &str = "set -e
cp /stage/units/simpletcpunixrelay-* /stage/foobar.service /etc/systemd/system/
cp /stage/units/simpletcpunixrelay.sysusers /usr/lib/sysusers.d/simpletcpunixrelay.conf
systemd-sysusers
mkdir -p /etc/simpletcpunixrelay
echo CONNECT=127.0.0.1:8080 > /etc/simpletcpunixrelay/expose-foobar.env
printf 'LISTEN=127.0.0.1:8081\\nCONNECT=/run/foobar-unix/socket\\n' \
    > /etc/simpletcpunixrelay/reexpose-foobar.env
echo CONNECT=/run/foobar-unix/socket > /etc/simpletcpunixrelay/activated-8082.env
systemctl daemon-reload
";

/// The units under systemd as PID 1: foobar.service (TCP only, PrivateNetwork)
/// exposed at /run/foobar-unix/socket by the expose template, that socket
/// re-exposed on TCP 8081 and, socket-activated, on TCP 8082; a client in
/// the container reaches foobar through each, and not over TCP directly.
#[test]
fn units_under_systemd_in_nspawn() {
    if !is_root() {
        skip!("needs root for systemd-nspawn");
    }
    if let Some(t) = missing_tool(&["systemd-nspawn", "debootstrap", "nsenter", "timeout"]) {
        skip!("{t} not installed (packages systemd-container, debootstrap)");
    }
    let started = Instant::now();
    let root = match debian_rootfs() {
        Ok(root) => root,
        Err(e) => skip!("cannot build the Debian root file system: {e}"),
    };

    let stage = TempDir::new();
    fs::write(stage.join("foobar.service"), FOOBAR_UNIT).unwrap();
    fs::write(stage.join("foobar.pl"), FOOBAR_PL).unwrap();
    fs::write(stage.join("client.pl"), CLIENT_PL).unwrap();
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
    eprintln!("container running after {:.1?}", started.elapsed());
    container.ok(INSTALL);

    // 1. Expose foobar.service at /run/foobar-unix/socket.
    let enabled = text(
        &container
            .sh("systemctl enable simpletcpunixrelay-expose@foobar.service 2>&1")
            .stdout,
    );
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
        container.client("", "/run/foobar-unix/socket", "root"),
        "root",
    );
    // The relay really shares foobar's network namespace, not the host's.
    let foobar_netns = container.netns_of_unit("foobar.service");
    assert_eq!(container.netns_of_unit(expose), foobar_netns);
    assert_ne!(container.ok("readlink /proc/1/ns/net").trim(), foobar_netns);
    // foobar is not reachable over TCP from the container's network.
    let (code, _, stderr) = container.client("", "127.0.0.1:8080", "direct");
    assert_eq!(code, 3, "TCP to foobar must fail: {stderr}");
    // The socket is for the group: a member may connect, others may not.
    let gid = container.ok("getent group simpletcpunixrelay | cut -d: -f3");
    let member = format!("setpriv --reuid=4242 --regid=4242 --groups={}", gid.trim());
    served(
        container.client(&member, "/run/foobar-unix/socket", "member"),
        "member",
    );
    let stranger = "setpriv --reuid=4243 --regid=4243 --clear-groups";
    let (code, _, stderr) = container.client(stranger, "/run/foobar-unix/socket", "x");
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
        container.client("", "/run/foobar-unix/socket", "again"),
        "again",
    );

    // 2. Re-expose the socket on TCP 127.0.0.1:8081.
    container.ok("systemctl enable --now simpletcpunixrelay-reexpose@foobar.service");
    served(
        container.client("", "127.0.0.1:8081", "reexposed"),
        "reexposed",
    );

    // 3. The same, socket-activated on 127.0.0.1:8082.
    let activated = "simpletcpunixrelay-activated@8082.service";
    container.ok("systemctl enable --now simpletcpunixrelay-activated@8082.socket");
    assert_eq!(
        text(
            &container
                .sh(&format!("systemctl is-active {activated}"))
                .stdout
        )
        .trim(),
        "inactive"
    );
    served(
        container.client("", "127.0.0.1:8082", "activated"),
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
        text(
            &container
                .sh(&format!("systemctl is-active {expose}"))
                .stdout
        )
        .trim(),
        "inactive"
    );
    container.ok("test ! -e /run/foobar-unix");
    eprintln!("nspawn test took {:.1?}", started.elapsed());
}
