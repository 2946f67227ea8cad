//! Faults in reading the command line: every byte of it is either a valid
//! value with the meaning systemd would give it, or a usage error (exit
//! status 2, one line on standard error, never a panic).
//!
//! - Arguments that are not UTF-8: a path is bytes on Linux and valid as
//!   LISTEN or CONNECT; any other such value is a usage error.
//! - Time spans: every unit of `systemd.time(7)`; `0` means "no limit" where
//!   it does for systemd, and is a usage error where it would make no sense.
//! - Values as strict as systemd's own (no signs, no spaces, no reserved
//!   ids), `fd:N` that is neither listening nor connected, and start-up
//!   errors that name the real cause.
//!
//! The relay's log is read as bytes here: a non-UTF-8 path may appear in it.

mod common;
use common::*;

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// A CONNECT that nothing needs to reach.
const CONNECT: &str = "127.0.0.1:9";

/// A relay process whose standard error is read line by line as bytes
/// (shown lossily), so that a raw non-UTF-8 path in it cannot end the log.
/// Killed on drop if it is still running.
struct Spawned {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Spawned {
    fn new(mut command: Command) -> Spawned {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn relay");
        drop(command); // descriptors it passed to the child are the child's alone now
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let test = thread::current().name().unwrap_or("relay").to_string();
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        eprintln!("[{test}] {text}");
                        if tx.send(text).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Spawned {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`; `None` if the log ended
    /// (the relay exited) without one.
    fn line(&mut self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "neither a line containing {needle:?} nor an exit within {DEADLINE:?}; log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Waits for the `listening on` line, or panics with the log.
    fn listening(&mut self) -> String {
        self.line("listening on ")
            .unwrap_or_else(|| panic!("the relay exited without listening; log:\n{}", self.log()))
    }

    fn signal(&self, signal: Signal) {
        // Our own child, which we have not reaped.
        common::signal(self.child.id() as i32, signal).unwrap();
    }

    /// Waits for the relay to exit and for the end of its log.
    fn exit(&mut self) -> ExitStatus {
        let status = wait_exit(&mut self.child, DEADLINE)
            .unwrap_or_else(|| panic!("the relay did not exit; log:\n{}", self.log()));
        while self.line("\0never\0").is_some() {}
        status
    }

    /// Everything logged so far.
    fn log(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the relay and asserts a usage error: no `listening on` line, exit
/// status 2, exactly one line on standard error, no panic. Returns the line.
fn usage_error(command: Command, what: &str) -> String {
    let mut relay = Spawned::new(command);
    if let Some(line) = relay.line("listening on ") {
        panic!("{what}: accepted, the relay started ({line})");
    }
    let status = relay.exit();
    let log = relay.log();
    assert_eq!(status.code(), Some(2), "{what}: exit status; log:\n{log}");
    assert!(
        !log.contains("panicked") && !log.to_lowercase().contains("backtrace"),
        "{what}: a panic; log:\n{log}"
    );
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line on standard error:\n{log}");
    lines[0].to_string()
}

/// Asserts that the relay with `args` is a usage error naming `option`.
fn assert_usage_error_naming(args: &[&str], option: &str) {
    let what = format!("{args:?}");
    let line = usage_error(command(args), &what);
    assert!(
        line.contains(option),
        "{what}: should name {option}: {line}"
    );
}

/// Starts the relay and stops it with SIGTERM: `Err` with the log if it
/// never listened.
fn starts(command: Command) -> Result<(), String> {
    let mut relay = Spawned::new(command);
    if relay.line("listening on ").is_none() {
        return Err(relay.log());
    }
    relay.signal(Signal::TERM);
    match relay.exit() {
        status if status.success() => Ok(()),
        status => Err(format!("{status:?} after SIGTERM; log:\n{}", relay.log())),
    }
}

/// A path in `dir` whose last component is the given bytes.
fn path_with_bytes(dir: &TempDir, name: &[u8]) -> PathBuf {
    let mut bytes = dir.0.as_os_str().as_bytes().to_vec();
    bytes.push(b'/');
    bytes.extend_from_slice(name);
    PathBuf::from(OsString::from_vec(bytes))
}

/// Sends `data` over TCP, half-closes, and reads until the relay closes;
/// errors (a client the relay dropped) just end the exchange early.
fn tcp_round_trip(address: &str, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

#[test]
fn non_utf8_listen_path_is_listened_on_relayed_and_removed() {
    let dir = TempDir::new();
    let path = path_with_bytes(&dir, b"\xff\xfe.sock");
    let backend = Backend::tcp(echo);
    let mut relay = command(&[]);
    relay.arg(&path).arg(&backend.connect_arg);
    let mut relay = Spawned::new(relay);
    relay.listening();
    let stream = UnixStream::connect(&path).expect("the relay listens at the byte path");
    assert_eq!(
        exchange(Box::new(stream), b"bytes, not UTF-8".to_vec()),
        b"bytes, not UTF-8"
    );
    relay.signal(Signal::TERM);
    assert_eq!(relay.exit().code(), Some(0), "log:\n{}", relay.log());
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "the socket file is removed at exit: {:?}",
        dir.entries()
    );
}

#[test]
fn non_utf8_connect_path_is_connected_to() {
    let dir = TempDir::new();
    let path = path_with_bytes(&dir, b"backend-\xff\xfe.sock");
    let listener = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            thread::spawn(move || echo(Box::new(conn)));
        }
    });
    let mut relay = command(&["127.0.0.1:0"]);
    relay.arg(&path);
    let mut relay = Spawned::new(relay);
    let line = relay.listening();
    let address = line.split("listening on ").nth(1).unwrap();
    let address = address.split(' ').next().unwrap();
    assert_eq!(
        tcp_round_trip(address, b"to a byte path"),
        b"to a byte path",
        "log:\n{}",
        relay.log()
    );
}

#[test]
fn non_utf8_option_values_are_usage_errors_not_panics() {
    let dir = TempDir::new();
    let listen = dir.arg("relay.sock");
    let cases: [(&str, &[&[u8]]); 4] = [
        ("-c", &[b"-c", b"\xff"]),
        ("--idle-timeout", &[b"--idle-timeout", b"\xff"]),
        ("--socket-group", &[b"--socket-group", b"\xff"]),
        ("an unknown option", &[b"--\xff"]),
    ];
    for (what, option) in cases {
        let mut relay = Command::new(relay_bin());
        for arg in option {
            relay.arg(OsStr::from_bytes(arg));
        }
        relay.args([&listen, CONNECT]);
        usage_error(relay, what);
        assert!(dir.entries().is_empty(), "{what}: nothing is created");
    }
}

#[test]
fn time_spans_take_every_systemd_unit() {
    let spans = [
        "5us",
        "5usec",
        "5\u{b5}s",
        "5\u{3bc}s",
        "5ms",
        "5msec",
        "5s",
        "5sec",
        "1second",
        "5seconds",
        "5m",
        "5min",
        "1minute",
        "5minutes",
        "5h",
        "5hr",
        "1hour",
        "5hours",
        "5d",
        "1day",
        "5days",
        "5w",
        "1week",
        "5weeks",
        "5M",
        "1month",
        "5months",
        "5y",
        "1year",
        "5years",
        "1y 2M 3w",
        "1h30min",
        "5 min 20 s",
        "1.5h",
        // Corners of systemd's parse_sec(), each as systemd-analyze reads it.
        "+5s",
        "5 +3",
        "5s.5",
        ".5s",
        "\u{b}5s",
        "0.000000000000000000000000001s",
        "18446744073708s",
        "9223372036854775807us 9223372036854775807us",
    ];
    let rejected: Vec<String> = spans
        .iter()
        .filter_map(|span| {
            starts(command(&["--idle-timeout", span, "127.0.0.1:0", CONNECT]))
                .err()
                .map(|log| format!("{span:?}: {log}"))
        })
        .collect();
    assert!(
        rejected.is_empty(),
        "--idle-timeout should accept these:\n{}",
        rejected.join("\n")
    );
}

#[test]
fn time_spans_that_systemd_rejects_are_usage_errors() {
    // What systemd-analyze timespan refuses: nanoseconds, a dot without a
    // digit after it, whitespace systemd does not skip, 2^64-1 us and more.
    for span in [
        "1 fortnight",
        "-1s",
        "-0",
        "1..2s",
        "5ns",
        "5nsec",
        "5.",
        "3.s",
        "1. 5",
        "5s\u{b}",
        "5\u{c}s",
        "5\u{a0}s",
        "\u{2003}5s",
        "5s\u{3000}",
        "18446744073709551615us",
        "18446744073709551616us",
        "18446744073709s",
        "9223372036854775808us",
        "9223372036854775807us 9223372036854775807us 1us",
    ] {
        assert_usage_error_naming(
            &["--idle-timeout", span, "127.0.0.1:0", CONNECT],
            "--idle-timeout",
        );
    }
}

#[test]
fn connect_timeout_zero_means_no_limit() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&[
        "--connect-timeout",
        "0",
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    assert_eq!(
        tcp_round_trip(relay.address(), b"no limit"),
        b"no limit",
        "log:\n{}",
        relay.log()
    );
}

#[test]
fn idle_timeout_zero_means_no_limit() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&["--idle-timeout", "0", "127.0.0.1:0", &backend.connect_arg]);
    let mut conn = connect(relay.address());
    conn.write_all(b"a").unwrap();
    assert_eq!(read_exactly(&mut *conn, 1), b"a", "log:\n{}", relay.log());
    assert_silent(&mut *conn, Duration::from_secs(1), "an idle connection");
    conn.write_all(b"b").unwrap();
    assert_eq!(read_exactly(&mut *conn, 1), b"b");
}

#[test]
fn shutdown_timeout_zero_means_no_limit() {
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&[
        "--shutdown-timeout",
        "0",
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    let mut conn = connect(relay.address());
    conn.write_all(b"before").unwrap();
    assert_eq!(read_exactly(&mut *conn, 6), b"before");
    relay.signal(Signal::TERM);
    relay.wait_for_line("stopping");
    assert!(
        relay.wait_exit_within(Duration::from_secs(1)).is_none(),
        "the relay must wait for the open connection; log:\n{}",
        relay.log()
    );
    conn.write_all(b"after").unwrap();
    assert_eq!(read_exactly(&mut *conn, 5), b"after");
    conn.shutdown_write();
    assert_eq!(read_to_end(&mut *conn), b"");
    assert_eq!(relay.wait_exit().code(), Some(0), "log:\n{}", relay.log());
}

#[test]
fn exit_idle_time_zero_is_a_usage_error() {
    assert_usage_error_naming(
        &["--exit-idle-time", "0", "127.0.0.1:0", CONNECT],
        "--exit-idle-time",
    );
}

#[test]
fn socket_mode_is_read_as_systemds_parse_mode() {
    let dir = TempDir::new();
    let listen = dir.arg("relay.sock");
    for (mode, reason) in [
        ("+660", "not an octal number"),
        ("-660", "not an octal number"),
        ("0660 ", "not an octal number"),
        ("0x1b0", "not an octal number"),
        ("0668", "not an octal number"),
        ("10000", "too large"),
        ("017777", "too large"),
        ("", "empty"),
    ] {
        let line = usage_error(
            command(&["--socket-mode", mode, &listen, CONNECT]),
            &format!("--socket-mode {mode:?}"),
        );
        assert!(
            line.contains("--socket-mode") && line.contains(reason),
            "--socket-mode {mode:?}: should say {reason:?}: {line}"
        );
        assert!(dir.entries().is_empty(), "{mode:?}: {:?}", dir.entries());
    }
    // As systemd's parse_mode() (SocketMode=): leading zeros and leading
    // whitespace are fine, up to 07777.
    for (mode, bits) in [
        ("0660", 0o660),
        ("660", 0o660),
        ("2770", 0o2770),
        ("0", 0),
        ("01777", 0o1777),
        ("00660", 0o660),
        (" 0640", 0o640),
        ("07777", 0o7777),
    ] {
        let relay = Relay::start(&["--socket-mode", mode, &listen, CONNECT]);
        let got = std::fs::metadata(&listen).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, bits, "--socket-mode {mode}: {got:o}");
        drop(relay);
        let _ = std::fs::remove_file(&listen);
    }
}

#[test]
fn connections_max_is_read_as_systemd_socket_proxyd_reads_it() {
    // safe_atou(), as for MaxConnections= and proxyd's --connections-max=:
    // a sign, leading whitespace and 0x/0o/0b prefixes are fine ...
    for count in ["+5", " 5", "0x10", "0o17", "010"] {
        starts(command(&["-c", count, "127.0.0.1:0", CONNECT]))
            .unwrap_or_else(|log| panic!("-c {count:?} should start: {log}"));
    }
    // ... trailing garbage, negative numbers and 2^32 are not.
    for (count, reason) in [
        ("5x", "not a number"),
        ("5 ", "not a number"),
        ("1e3", "not a number"),
        ("", "not a number"),
        ("-1", "out of range"),
        ("4294967296", "out of range"),
    ] {
        let line = usage_error(
            command(&["-c", count, "127.0.0.1:0", CONNECT]),
            &format!("-c {count:?}"),
        );
        assert!(
            line.contains("-c") && line.contains(reason),
            "-c {count:?}: should say {reason:?}: {line}"
        );
    }
}

/// Checks that `flag` (`--allow-uid`, `--allow-gid`) refuses, as a usage
/// error naming it, an id with a sign and the ids systemd refuses.
fn assert_flag_rejects_signs_and_ids_systemd_rejects(flag: &str) {
    let dir = TempDir::new();
    let listen = dir.arg("relay.sock");
    // parse_uid() refuses a leading zero, and digits are no name: "00" and
    // "007" are neither; valid_user_group_name() refuses the rest.
    for id in [
        "+0",
        "4294967295",
        "65535",
        "00",
        "007",
        "-1",
        " root",
        "root ",
        "a:b",
        "a/b",
        "..",
        "",
    ] {
        assert_usage_error_naming(&[flag, id, &listen, CONNECT], flag);
    }
}

#[test]
fn allow_uid_rejects_signs_and_ids_systemd_rejects() {
    assert_flag_rejects_signs_and_ids_systemd_rejects("--allow-uid");
}

#[test]
fn allow_gid_rejects_signs_and_ids_systemd_rejects() {
    assert_flag_rejects_signs_and_ids_systemd_rejects("--allow-gid");
}

#[test]
fn fd_number_with_a_sign_is_a_usage_error() {
    // A listening socket really is at descriptor 3: only the spelling is wrong.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut relay = command(&["fd:+3", CONNECT]);
    pass_fds(&mut relay, &[listener.as_raw_fd()]);
    let line = usage_error(relay, "fd:+3");
    assert!(line.contains("+3"), "should name fd:+3: {line}");
}

#[test]
fn fd_neither_listening_nor_connected_is_a_usage_error() {
    for domain in [socket2::Domain::IPV4, socket2::Domain::UNIX] {
        let fresh = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
        let mut relay = command(&["fd:3", CONNECT]);
        pass_fds(&mut relay, &[fresh.as_raw_fd()]);
        let what = format!("a fresh {domain:?} socket");
        let line = usage_error(relay, &what);
        assert!(line.contains("fd:3"), "{what}: should name fd:3: {line}");
        let lower = line.to_lowercase();
        assert!(
            lower.contains("listening") && lower.contains("connected"),
            "{what}: should say it is neither listening nor connected: {line}"
        );
    }
}

#[test]
fn listen_below_a_regular_file_says_not_a_directory() {
    // Today's relay already says this (checked on the unfixed relay); this
    // guards the start-up messages against a "does not exist" that hides it.
    let dir = TempDir::new();
    std::fs::write(dir.join("file"), b"not a directory").unwrap();
    let listen = dir.arg("file/x.sock");
    let finished = run_command(command(&[&listen, CONNECT]));
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    let message = finished.stderr.to_lowercase();
    assert!(message.contains("not a directory"), "{finished:?}");
    assert!(!message.contains("does not exist"), "{finished:?}");
}

/// A copy of the relay binary that any user may run (the build directory
/// need not be reachable by `nobody`).
fn relay_anyone_may_run(dir: &TempDir) -> PathBuf {
    let copy = dir.join("relay");
    std::fs::copy(relay_bin(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A child that another test forked while the copy was open for writing
    // holds it open until its exec: until then, exec fails with ETXTBSY.
    // Once one exec succeeds nobody can hold it open for writing again.
    wait_until(
        "the copied relay to be executable",
        || match Command::new(&copy).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => false,
            Err(e) => panic!("run the copied relay: {e}"),
            Ok(_) => true,
        },
    );
    copy
}

/// Makes the child run as `nobody` (uid and gid 65534, no other groups).
fn as_nobody(command: &mut Command) {
    // SAFETY: plain system calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            for rc in [
                libc::setgroups(0, std::ptr::null()),
                libc::setgid(65534),
                libc::setuid(65534),
            ] {
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[test]
fn listen_in_a_directory_the_user_may_not_write_says_permission_denied() {
    // Today's relay already says this (checked on the unfixed relay); this
    // guards the start-up messages against a "does not exist" that hides it.
    if !is_root() {
        skip("needs root to run the relay as nobody in a root-owned directory");
        return;
    }
    let bin = open_dir();
    let relay_copy = relay_anyone_may_run(&bin);
    let dir = open_dir();
    let listen = dir.arg("x.sock");
    let mut relay = Command::new(&relay_copy);
    relay.args([&listen, CONNECT]);
    as_nobody(&mut relay);
    let finished = run_command(relay);
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    assert!(
        finished.stderr.contains("Permission denied"),
        "{finished:?}"
    );
    assert!(!finished.stderr.contains("does not exist"), "{finished:?}");
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}

#[test]
fn keepalive_beyond_tcp_keepidle_is_a_usage_error_naming_the_limit() {
    for span in ["10h", "1d", "32768s", "9h 6min 8s"] {
        let line = usage_error(
            command(&["--keepalive", span, "127.0.0.1:0", CONNECT]),
            &format!("--keepalive {span}"),
        );
        assert!(
            line.contains("--keepalive") && line.contains("32767") && line.contains("TCP_KEEPIDLE"),
            "--keepalive {span}: should name the limit: {line}"
        );
    }
    // The limit itself is fine.
    starts(command(&["--keepalive", "32767s", "127.0.0.1:0", CONNECT]))
        .expect("--keepalive 32767s starts");
}

#[test]
fn ready_fd_naming_a_passed_socket_is_a_usage_error() {
    // A listener passed by socket activation at 3 (and another at 4): the
    // notification descriptor cannot be either, whatever LISTEN is.
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let second = TcpListener::bind("127.0.0.1:0").unwrap();
    for (listen, ready_fd) in [("sd-listen", "3"), ("sd-listen", "4"), ("127.0.0.1:0", "3")] {
        let mut relay = command(&["--ready-fd", ready_fd, listen, CONNECT]);
        relay
            .env("LISTEN_FDS", "2")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        pass_fds(&mut relay, &[first.as_raw_fd(), second.as_raw_fd()]);
        let what = format!("{listen} with --ready-fd {ready_fd}");
        let line = usage_error(relay, &what);
        assert!(
            line.contains("--ready-fd") && line.contains(&format!("fd:{ready_fd}")),
            "{what}: should name --ready-fd and fd:{ready_fd}: {line}"
        );
    }
    // Nothing was written into the listeners: each still accepts, with no
    // byte waiting from the relay.
    for listener in [&first, &second] {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        drop(client);
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    // A descriptor past the passed ones is a notification descriptor.
    let (ready_reader, ready_writer) = std::io::pipe().unwrap();
    let mut relay = command(&["--ready-fd", "5", "sd-listen", CONNECT]);
    relay.env("LISTEN_FDS", "2").env_remove("LISTEN_PID");
    pass_fds(
        &mut relay,
        &[
            first.as_raw_fd(),
            second.as_raw_fd(),
            ready_writer.as_raw_fd(),
        ],
    );
    let mut relay = Spawned::new(relay);
    drop(ready_writer); // the relay's copy is the only one left
    relay.listening();
    let mut ready = Vec::new();
    let mut reader = ready_reader;
    reader.read_to_end(&mut ready).unwrap();
    assert_eq!(ready, b"\n", "log:\n{}", relay.log());
}

#[test]
fn spans_beyond_an_instant_are_usage_errors_not_panics() {
    // 2^64-1 us and more is infinity's in systemd, and out of range here.
    for (option, span) in [
        ("--exit-idle-time", "18446744073709551615s"),
        ("--idle-timeout", "9300000000000000000s"),
        ("--connect-timeout", "18446744073709551616us"),
    ] {
        let line = usage_error(
            command(&[option, span, "127.0.0.1:0", CONNECT]),
            &format!("{option} {span}"),
        );
        assert!(
            line.contains(option) && line.contains("out of range"),
            "{option} {span}: {line}"
        );
    }
}

#[test]
fn usage_errors_quote_arguments_on_one_line() {
    let dir = TempDir::new();
    let listen = dir.arg("relay.sock");
    let cases: [(&[&[u8]], &str); 7] = [
        (&[b"a\nb"], r"'a\nb'"),
        (&[b"\x01\x02"], r"'\u{1}\u{2}'"),
        (&[b"\t\n"], r"'\t\n'"),
        (&[b"--sandbox", b"strict\n"], r"'strict\n'"),
        (&[b"--idle-timeout", b"5\x1b[31m"], r"'5\u{1b}[31m'"),
        (&[b"--socket-group", b"wheel\r"], r"'wheel\r'"),
        (&[b"--fr\nob"], r"'--fr\nob'"),
    ];
    for (extra, shown) in cases {
        let mut relay = command(&[&listen, CONNECT]);
        for arg in extra {
            relay.arg(OsStr::from_bytes(arg));
        }
        let what = format!("{extra:?}");
        let line = usage_error(relay, &what);
        assert!(line.contains(shown), "{what}: should show {shown}: {line}");
        assert!(
            !line.chars().any(|c| c.is_control()),
            "{what}: no control character: {line:?}"
        );
        assert!(dir.entries().is_empty(), "{what}: nothing is created");
    }
}

#[test]
fn a_non_utf8_value_beginning_with_a_dash_names_its_option() {
    let dir = TempDir::new();
    let listen = dir.arg("relay.sock");
    for option in [
        "--idle-timeout",
        "--exit-idle-time",
        "-c",
        "--socket-mode",
        "--socket-group",
        "--sandbox",
        "--allow-uid",
    ] {
        let mut relay = command(&[option]);
        relay
            .arg(OsStr::from_bytes(b"-\xff"))
            .args([&listen, CONNECT]);
        let line = usage_error(relay, option);
        assert!(
            line.contains(&format!("{option}'")) || line.contains(&format!("{option}:")),
            "{option}: should name the option: {line}"
        );
        assert!(
            line.contains(r"'-\xff'") || line.contains("UTF-8"),
            "{line}"
        );
    }
    // Given as --option=VALUE too.
    let mut relay = command(&[]);
    relay
        .arg(OsStr::from_bytes(b"--idle-timeout=-\xff"))
        .args([&listen, CONNECT]);
    let line = usage_error(relay, "--idle-timeout=");
    assert!(line.contains("--idle-timeout"), "{line}");
}

#[test]
fn gnu_forms_of_systemd_socket_proxyds_options() {
    // systemd-socket-proxyd's own spellings, and GNU's in general.
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&[
        "--connections-max=1",
        "--exit-idle-time=1s",
        "--connect-timeout=5s",
        "--idle-timeout=5min 20s",
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    // --exit-idle-time=1s took effect: the relay ends on its own.
    assert_eq!(relay.wait_exit().code(), Some(0), "log:\n{}", relay.log());
    // Grouped flags: -vc1 is -v -c 1; -v shows as a line per connection.
    let relay = Relay::start(&["-vc1", "127.0.0.1:0", &backend.connect_arg]);
    assert_eq!(tcp_round_trip(relay.address(), b"grouped"), b"grouped");
    let mut relay = relay;
    relay.wait_for_line("bytes up");
    // ... and judged as if given apart.
    assert_usage_error_naming(&["-vq", "127.0.0.1:0", CONNECT], "-q/-v");
    assert_usage_error_naming(&["--quiet=yes", "127.0.0.1:0", CONNECT], "--quiet");
    // After --, an argument that looks like an option is an endpoint.
    let line = usage_error(command(&["127.0.0.1:0", "--", "-v"]), "-- -v");
    assert!(line.contains("CONNECT '-v'"), "{line}");
}

#[test]
fn a_start_up_error_naming_a_path_with_a_newline_is_one_line() {
    let dir = TempDir::new();
    let listen = dir.arg("no\nsuch/relay.sock");
    let finished = run_command(command(&[&listen, CONNECT]));
    assert_eq!(finished.status.code(), Some(1), "{finished:?}");
    let lines = finished.stderr_lines();
    assert_eq!(lines.len(), 1, "one line: {finished:?}");
    assert!(lines[0].contains(r"no\nsuch"), "{finished:?}");
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}
