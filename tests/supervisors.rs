//! The relay among the programs around it (issue 13): s6's readiness
//! descriptor (`--ready-fd`), systemfd's `LISTEN_FDS` without `LISTEN_PID`,
//! a backend that is not listening yet (`--connect-retry`), TCP keepalive
//! (`--keepalive`), `-h`, fatal lines without a timestamp on a terminal, and
//! shell completions that list every option of `--help`.
//!
//! Black-box: the real binary, real sockets, a real pseudo-terminal and the
//! real shells (zsh and fish only where installed).

mod common;
use common::*;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Asserts a usage error (exit 2) reported on one line that names `option`
/// and complains about its value, not about an unknown option.
fn assert_usage_error_naming(finished: &Finished, option: &str) {
    assert_eq!(
        finished.status.code(),
        Some(2),
        "exit status; stderr:\n{}",
        finished.stderr
    );
    let lines = finished.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {lines:?}");
    assert!(lines[0].contains(option), "names {option}: {}", lines[0]);
    assert!(
        !lines[0].contains("Unrecognized"),
        "{option} must be a known option whose value is wrong: {}",
        lines[0]
    );
}

/// A TCP port that is bound but not listening: connecting to it is refused.
/// Calling `listen` on the socket later brings the "backend" up.
fn refusing_port() -> (Socket, String) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let address = socket
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap()
        .to_string();
    let refused = TcpStream::connect(&address).expect_err("nothing listens yet");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    (socket, address)
}

/// The connected TCP sockets the relay `pid` holds (not its listeners).
fn connected_tcp_sockets(pid: i32) -> Vec<Socket> {
    process_sockets(pid)
        .expect("copy the relay's sockets")
        .into_iter()
        .filter(|s| matches!(s.domain(), Ok(Domain::IPV4 | Domain::IPV6)))
        .filter(|s| s.r#type().is_ok_and(|t| t == Type::STREAM))
        .filter(|s| !s.is_listener().unwrap())
        .filter(|s| s.peer_addr().is_ok())
        .collect()
}

fn describe(socket: &Socket) -> String {
    let local = socket.local_addr().unwrap().as_socket().unwrap();
    let peer = socket.peer_addr().unwrap().as_socket().unwrap();
    format!("{local} -> {peer}")
}

/// Sends `data` and reads it back through an echoing relay, leaving the
/// connection open: by then the relay has set up both of its sockets.
fn round_trip(conn: &mut dyn Conn, data: &[u8]) {
    conn.write_all(data).unwrap();
    assert_eq!(read_exactly(conn, data.len()), data);
}

/// The NoNewPrivs value of every thread of `pid`.
fn no_new_privs_of_threads(pid: i32) -> Vec<String> {
    let mut values = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("NoNewPrivs:"))
            .expect("a NoNewPrivs line");
        values.push(line["NoNewPrivs:".len()..].trim().to_string());
    }
    values
}

/// Whether `line` starts with a log timestamp (`2026-01-31T…`).
fn starts_with_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-'
}

/// A pseudo-terminal: (master, slave), both close-on-exec so that relays
/// spawned by tests running in parallel do not inherit them.
fn open_pty() -> (OwnedFd, std::fs::File) {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(
        master >= 0,
        "posix_openpt: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: plain calls on the master we own; the name buffer is ours.
    let name = unsafe {
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0, "grantpt");
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0, "unlockpt");
        let mut buffer = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), buffer.as_mut_ptr(), buffer.len()),
            0,
            "ptsname_r"
        );
        std::ffi::CStr::from_ptr(buffer.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    use std::os::unix::fs::OpenOptionsExt;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .unwrap_or_else(|e| panic!("open {name}: {e}"));
    (master, slave)
}

/// Runs the relay with a pseudo-terminal as standard error; returns its exit
/// status and what it printed there (without the terminal's `\r`), read
/// until the hang-up or until a whole line containing `needle` arrived.
fn run_on_terminal(args: &[&str], needle: &str) -> (ExitStatus, String) {
    let (master, slave) = open_pty();
    let mut command = command(args);
    command
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave));
    let mut child = command.spawn().expect("spawn relay");
    drop(command); // the child holds the only slave now
    let mut text = String::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let complete = text
            .lines()
            .any(|l| l.contains(needle) && text.contains(&format!("{l}\n")));
        if complete {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no whole line containing {needle:?} on the terminal within {DEADLINE:?}: {text:?}"
        );
        let mut poll = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that lives on the stack.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(1000) as i32) };
        if ready <= 0 {
            continue;
        }
        let mut buffer = [0u8; 4096];
        // SAFETY: reads into our buffer from the master we own.
        let n = unsafe { libc::read(master.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            break; // EIO: every slave is closed and the output is drained
        }
        text.push_str(&String::from_utf8_lossy(&buffer[..n as usize]).replace('\r', ""));
    }
    let status = wait_exit(&mut child, DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the relay should exit on its own; terminal: {text:?}")
    });
    (status, text)
}

/// The options the Options block of `--help` lists, long and short
/// (`--connect-timeout`, `-c`, …).
fn help_options() -> Vec<String> {
    let help = run_command(command(&["--help"]));
    assert!(help.status.success(), "--help: {}", help.stderr);
    let mut options = Vec::new();
    let mut in_block = false;
    for line in help.stdout.lines() {
        if line == "Options:" {
            in_block = true;
            continue;
        }
        if !in_block {
            continue;
        }
        if line.trim().is_empty() {
            break;
        }
        let head = line.trim_start();
        // Continuation lines of descriptions are indented further and do not
        // start with a dash.
        if line.len() - head.len() > 4 || !head.starts_with('-') {
            continue;
        }
        for word in head.split_whitespace() {
            let word = word.trim_end_matches(',');
            if !word.starts_with('-') {
                break;
            }
            options.push(word.to_string());
        }
    }
    for expected in ["-c", "--connect-timeout", "-q", "-v", "--help"] {
        assert!(
            options.iter().any(|o| o == expected),
            "the Options block of --help should list {expected}: {options:?}\n{}",
            help.stdout
        );
    }
    options
}

/// The words of `text` made of letters, digits and dashes.
fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// `text` without what `open`…`close` enclose (descriptions).
fn strip_enclosed(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in text.chars() {
        if !inside && c == open {
            inside = true;
        } else if inside && c == close {
            inside = false;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// The options a fish script declares (`-l NAME` as `--NAME`, `-s X` as
/// `-X`), descriptions left out.
fn fish_options(script: &str) -> BTreeSet<String> {
    let mut options = BTreeSet::new();
    for line in script.lines() {
        let code = strip_enclosed(line, '\'', '\'');
        let tokens: Vec<&str> = code.split_whitespace().collect();
        if tokens.first() != Some(&"complete") {
            continue;
        }
        for (i, token) in tokens.iter().enumerate() {
            let next = tokens.get(i + 1).copied().unwrap_or("");
            match *token {
                "-l" | "--long-option" => {
                    options.insert(format!("--{next}"));
                }
                "-s" | "--short-option" => {
                    options.insert(format!("-{next}"));
                }
                _ => {
                    if let Some(name) = token.strip_prefix("--long-option=") {
                        options.insert(format!("--{name}"));
                    }
                    if let Some(name) = token.strip_prefix("--short-option=") {
                        options.insert(format!("-{name}"));
                    }
                }
            }
        }
    }
    options
}

/// Asserts that `offered` has every option of `--help`.
fn assert_offers_all(shell: &str, how: &str, offered: &BTreeSet<String>, options: &[String]) {
    let missing: Vec<&String> = options.iter().filter(|o| !offered.contains(*o)).collect();
    assert!(
        missing.is_empty(),
        "{shell} completion ({how}) lacks {missing:?} (has {offered:?})"
    );
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn completion_script(shell: &str) -> String {
    let finished = run_command(command(&["--completions", shell]));
    assert!(
        finished.status.success(),
        "--completions {shell}: {:?}; stderr:\n{}",
        finished.status,
        finished.stderr
    );
    assert!(
        finished.stderr.trim().is_empty(),
        "--completions {shell} writes nothing on stderr: {}",
        finished.stderr
    );
    assert!(
        finished.stdout.contains("simpletcpunixrelay"),
        "a {shell} script for the relay: {}",
        finished.stdout
    );
    finished.stdout
}

// ---------------------------------------------------------------------------
// --ready-fd (s6)
// ---------------------------------------------------------------------------

#[test]
fn ready_fd_gets_one_newline_once_ready_then_eof() {
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let backend = Backend::tcp(echo);
    let (reader, writer) = std::io::pipe().unwrap();
    let mut command = command(&["--ready-fd", "3", &socket, &backend.connect_arg]);
    pass_fds(&mut command, &[writer.as_raw_fd()]);
    // Not waiting for `listening on`: the descriptor is the readiness signal.
    let mut relay = Relay::start_command(command, 0);
    drop(writer); // the relay's is the only write end now

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = reader;
        let mut first = vec![0u8; 64];
        let n = reader.read(&mut first).unwrap_or(0);
        first.truncate(n);
        let _ = tx.send(first);
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        let _ = tx.send(rest);
    });
    let first = rx
        .recv_timeout(DEADLINE)
        .expect("something on the ready descriptor");
    assert_eq!(
        first,
        b"\n",
        "the first thing on --ready-fd is one newline; log:\n{}",
        relay.log()
    );
    // Ready means: the listener accepts and the sandbox is in place.
    let client = UnixStream::connect(&socket).expect("LISTEN accepts once ready was signalled");
    let privs = no_new_privs_of_threads(relay.pid());
    assert!(
        privs.iter().all(|v| v == "1"),
        "the sandbox (no_new_privs) is in place on every thread when ready is signalled: {privs:?}"
    );
    let rest = rx
        .recv_timeout(DEADLINE)
        .expect("the relay closes the ready descriptor after the newline");
    assert!(rest.is_empty(), "nothing after the newline: {rest:?}");
    assert!(relay.running(), "the relay goes on after signalling ready");

    let data = payload(100_000, 13);
    let client: Box<dyn Conn> = Box::new(client);
    client.set_read_timeout(Some(DEADLINE));
    assert_eq!(exchange(client, data.clone()), data);
}

#[test]
fn ready_fd_that_is_not_open_is_a_usage_error() {
    let mut command = command(&["--ready-fd", "9", "127.0.0.1:0", "127.0.0.1:1"]);
    close_in_child(&mut command, 9);
    assert_usage_error_naming(&run_command(command), "--ready-fd");
}

#[test]
fn ready_fd_on_standard_output_is_a_usage_error() {
    let finished = run_command(command(&["--ready-fd", "1", "127.0.0.1:0", "127.0.0.1:1"]));
    assert_usage_error_naming(&finished, "--ready-fd");
    assert!(
        finished.stdout.is_empty(),
        "nothing on stdout: {:?}",
        finished.stdout
    );
}

// ---------------------------------------------------------------------------
// systemfd / listenfd: LISTEN_FDS without LISTEN_PID
// ---------------------------------------------------------------------------

#[test]
fn sd_listen_takes_listen_fds_without_listen_pid() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let backend = Backend::tcp(echo);
    let mut command = command(&["sd-listen", &backend.connect_arg]);
    command
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    pass_fds(&mut command, &[listener.as_raw_fd()]);
    let relay = Relay::start_command(command, 1);
    drop(listener);
    assert_eq!(relay.address(), address, "serves the passed socket");
    let data = payload(200_000, 7);
    assert_eq!(exchange(connect(&address), data.clone()), data);
    assert_eq!(backend.connections(), 1);
}

#[test]
fn sd_listen_refuses_sockets_meant_for_another_process() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut command = command(&["sd-listen", "127.0.0.1:1"]);
    command
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env_remove("LISTEN_FDNAMES");
    pass_fds(&mut command, &[listener.as_raw_fd()]);
    let finished = run_command(command);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("no sockets were passed"),
        "{}",
        finished.stderr
    );
}

// ---------------------------------------------------------------------------
// --connect-retry
// ---------------------------------------------------------------------------

/// A client through `relay` that has sent `data` while CONNECT is not up:
/// checks that it hears nothing for 700 ms (`what` names it).
fn client_before_the_backend(relay: &Relay, data: &[u8], what: &str) -> Box<dyn Conn> {
    let mut client = connect(relay.address());
    client.write_all(data).unwrap();
    assert_silent(&mut *client, Duration::from_millis(700), what);
    client
}

/// Half-closes `client`, which sent `data` before `backend` was up, and
/// checks that the backend, reached once, echoed all of it.
fn assert_echoed_once_up(relay: &Relay, mut client: Box<dyn Conn>, data: &[u8], backend: &Backend) {
    client.shutdown_write();
    assert_eq!(read_to_end(&mut *client), data, "log:\n{}", relay.log());
    assert_eq!(backend.connections(), 1);
}

#[test]
fn connect_retry_waits_for_a_tcp_backend_that_starts_late() {
    let (socket, address) = refusing_port();
    let mut relay = Relay::start(&["--connect-retry", "127.0.0.1:0", &address]);
    let data = b"sent before the backend is up";
    let client = client_before_the_backend(
        &relay,
        data,
        "a client while CONNECT refuses, with --connect-retry",
    );
    assert!(relay.running());
    socket.listen(16).unwrap();
    let backend = Backend::tcp_on(socket.into(), echo);
    assert_echoed_once_up(&relay, client, data, &backend);
}

#[test]
fn without_connect_retry_a_refused_connect_closes_the_client_at_once() {
    let (_socket, address) = refusing_port();
    let relay = Relay::start(&["127.0.0.1:0", &address]);
    let mut client = connect(relay.address());
    let _ = client.write_all(b"hello");
    let started = Instant::now();
    let (received, _) = read_until_closed(&mut *client);
    let took = started.elapsed();
    assert!(received.is_empty(), "{received:?}");
    assert!(
        took < Duration::from_secs(2),
        "closed at once without --connect-retry, not after {took:?}; log:\n{}",
        relay.log()
    );
}

#[test]
fn connect_retry_gives_up_after_connect_timeout_and_says_why() {
    let (_socket, address) = refusing_port();
    let mut relay = Relay::start(&[
        "--connect-retry",
        "--connect-timeout",
        "1s",
        "127.0.0.1:0",
        &address,
    ]);
    let mut client = connect(relay.address());
    let started = Instant::now();
    let _ = client.write_all(b"hello");
    assert_silent(
        &mut *client,
        Duration::from_millis(500),
        "a client while CONNECT refuses, with --connect-retry",
    );
    let (received, _) = read_until_closed(&mut *client);
    let took = started.elapsed();
    assert!(received.is_empty(), "{received:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after --connect-timeout 1s, not after {took:?}"
    );
    let line = relay.wait_for_line("cannot connect");
    assert!(line.contains("warning"), "a warning: {line}");
    assert!(
        line.to_lowercase().contains("refused"),
        "the warning says that CONNECT refused: {line}"
    );
}

#[test]
fn connect_retry_waits_for_a_unix_socket_file_that_does_not_exist_yet() {
    let dir = TempDir::new();
    let path = dir.arg("backend.sock");
    let relay = Relay::start(&["--connect-retry", "127.0.0.1:0", &path]);
    let data = b"sent before the socket exists";
    let client = client_before_the_backend(
        &relay,
        data,
        "a client while CONNECT does not exist, with --connect-retry",
    );
    let backend = Backend::unix(&dir.join("backend.sock"), echo);
    assert_echoed_once_up(&relay, client, data, &backend);
}

// ---------------------------------------------------------------------------
// --keepalive
// ---------------------------------------------------------------------------

#[test]
fn keepalive_is_set_on_both_tcp_sides() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&["--keepalive", "37s", "127.0.0.1:0", &backend.connect_arg]);
    let mut client = connect(relay.address());
    round_trip(&mut *client, b"ping");
    let sockets = connected_tcp_sockets(relay.pid());
    let described: Vec<String> = sockets.iter().map(describe).collect();
    assert_eq!(
        sockets.len(),
        2,
        "the client's and the backend's connection: {described:?}"
    );
    let backend_address: SocketAddr = backend.connect_arg.parse().unwrap();
    let listen_address: SocketAddr = relay.address().parse().unwrap();
    assert!(
        sockets
            .iter()
            .any(|s| s.peer_addr().unwrap().as_socket() == Some(backend_address)),
        "one goes to the backend: {described:?}"
    );
    assert!(
        sockets
            .iter()
            .any(|s| s.local_addr().unwrap().as_socket() == Some(listen_address)),
        "one is the accepted client: {described:?}"
    );
    for socket in &sockets {
        let what = describe(socket);
        assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE on {what}");
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(37),
            "TCP_KEEPIDLE of {what}"
        );
    }
    drop(client);
}

#[test]
fn keepalive_is_set_on_the_tcp_side_of_a_unix_to_tcp_relay() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&[
        "--keepalive",
        "1min",
        &dir.arg("relay.sock"),
        &backend.connect_arg,
    ]);
    let mut client = connect(relay.address());
    round_trip(&mut *client, b"ping");
    let sockets = connected_tcp_sockets(relay.pid());
    assert_eq!(sockets.len(), 1, "the backend's connection");
    assert!(sockets[0].keepalive().unwrap());
    assert_eq!(
        sockets[0].tcp_keepalive_time().unwrap(),
        Duration::from_secs(60)
    );
    assert_eq!(relay.count_lines("keepalive"), 0, "{}", relay.log());
}

#[test]
fn without_keepalive_tcp_sockets_have_no_keepalive() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    let mut client = connect(relay.address());
    round_trip(&mut *client, b"ping");
    let sockets = connected_tcp_sockets(relay.pid());
    assert_eq!(sockets.len(), 2);
    for socket in &sockets {
        assert!(
            !socket.keepalive().unwrap(),
            "no SO_KEEPALIVE on {}",
            describe(socket)
        );
    }
}

#[test]
fn keepalive_below_one_second_is_a_usage_error() {
    for span in ["0", "500ms"] {
        let finished = run_command(command(&[
            "--keepalive",
            span,
            "127.0.0.1:0",
            "127.0.0.1:1",
        ]));
        assert_usage_error_naming(&finished, "--keepalive");
    }
}

// ---------------------------------------------------------------------------
// -h, and fatal lines on a terminal
// ---------------------------------------------------------------------------

#[test]
fn short_h_prints_the_help() {
    let long = run_command(command(&["--help"]));
    assert!(long.status.success());
    assert!(long.stdout.starts_with("Usage:"), "{}", long.stdout);
    for args in [&["-h"][..], &["127.0.0.1:0", "127.0.0.1:1", "-h"][..]] {
        let short = run_command(command(args));
        assert_eq!(short.status.code(), Some(0), "{args:?}: {}", short.stderr);
        assert_eq!(
            short.stdout, long.stdout,
            "{args:?} prints what --help does"
        );
        assert!(short.stderr.trim().is_empty(), "{args:?}: {}", short.stderr);
    }
}

#[test]
fn usage_error_on_a_terminal_has_no_timestamp() {
    let args = ["-c", "x", "127.0.0.1:0", "127.0.0.1:1"];
    let (status, text) = run_on_terminal(&args, "usage error");
    assert_eq!(status.code(), Some(2), "{text:?}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(
        lines[0].starts_with("simpletcpunixrelay: usage error:"),
        "no timestamp on a terminal: {:?}",
        lines[0]
    );

    // The same error into a pipe keeps its timestamp.
    let (status, stderr) = run_to_exit(&args);
    assert_eq!(status.code(), Some(2));
    let line = stderr.lines().find(|l| l.contains("usage error")).unwrap();
    assert!(
        starts_with_timestamp(line),
        "a timestamp into a pipe: {line:?}"
    );
    assert!(line.contains("simpletcpunixrelay: usage error:"), "{line}");
}

#[test]
fn startup_failure_on_a_terminal_has_no_timestamp() {
    let dir = TempDir::new();
    let listen = dir.arg("missing/relay.sock");
    let (status, text) = run_on_terminal(&[&listen, "127.0.0.1:1"], "simpletcpunixrelay: error:");
    assert_eq!(status.code(), Some(1), "{text:?}");
    let line = text
        .lines()
        .find(|l| l.contains("simpletcpunixrelay: error:"))
        .unwrap();
    assert!(
        line.starts_with("simpletcpunixrelay: error:"),
        "no timestamp on a terminal: {line:?}"
    );
}

// ---------------------------------------------------------------------------
// Completions
// ---------------------------------------------------------------------------

#[test]
fn completions_for_an_unknown_shell_are_a_usage_error() {
    let finished = run_command(command(&["--completions", "tcsh"]));
    assert_usage_error_naming(&finished, "--completions");
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
}

/// Writes the completion `script` to `name` in `dir` and checks that
/// `shell flag FILE` (its syntax check) accepts it. Returns the file, or
/// `None` if `shell` does not run.
fn write_and_check_syntax(
    dir: &TempDir,
    name: &str,
    script: &str,
    shell: &str,
    flag: &str,
) -> Option<PathBuf> {
    let file = dir.join(name);
    std::fs::write(&file, script).unwrap();
    let check = Command::new(shell).arg(flag).arg(&file).output().ok()?;
    assert!(
        check.status.success(),
        "{shell} {flag}: {}\n{script}",
        String::from_utf8_lossy(&check.stderr)
    );
    Some(file)
}

/// What a shell's completion run that must have succeeded offered: the
/// option `candidate` takes from each line of its output.
fn offered_options(output: &Output, candidate: impl Fn(&str) -> Option<&str>) -> BTreeSet<String> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(candidate)
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_offers_every_option_and_parses() {
    let options = help_options();
    let script = completion_script("bash");
    assert_offers_all("bash", "the script's words", &words(&script), &options);

    let dir = TempDir::new();
    let Some(file) = write_and_check_syntax(&dir, "simpletcpunixrelay.bash", &script, "bash", "-n")
    else {
        eprintln!("note: bash is not installed; its completion script was not run");
        return;
    };

    // What bash really offers after `simpletcpunixrelay -<TAB>`.
    let complete = r#"
        source "$1" || exit 1
        spec=$(complete -p simpletcpunixrelay) || exit 1
        function=${spec##*-F }; function=${function%% *}
        COMP_WORDS=(simpletcpunixrelay -); COMP_CWORD=1
        COMP_LINE="simpletcpunixrelay -"; COMP_POINT=${#COMP_LINE}
        "$function" simpletcpunixrelay - simpletcpunixrelay
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let offered = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", complete, "bash"])
        .arg(&file)
        .output()
        .unwrap();
    let offered = offered_options(&offered, |l| Some(l.trim()));
    assert_offers_all("bash", "simpletcpunixrelay -<TAB>", &offered, &options);
}

#[test]
fn zsh_completion_offers_every_option_and_parses() {
    let options = help_options();
    let script = completion_script("zsh");
    assert!(
        script.starts_with("#compdef simpletcpunixrelay"),
        "{script}"
    );
    // Descriptions are in brackets; the options outside them.
    let specs = strip_enclosed(&script, '[', ']');
    assert_offers_all("zsh", "the _arguments specs", &words(&specs), &options);

    if !installed("zsh") {
        eprintln!("note: zsh is not installed; its completion script was not parsed");
        return;
    }
    let dir = TempDir::new();
    write_and_check_syntax(&dir, "_simpletcpunixrelay", &script, "zsh", "-n").expect("zsh runs");
}

#[test]
fn fish_completion_offers_every_option_and_parses() {
    let options = help_options();
    let script = completion_script("fish");
    assert_offers_all(
        "fish",
        "-l/-s of its complete lines",
        &fish_options(&script),
        &options,
    );

    if !installed("fish") {
        eprintln!("note: fish is not installed; its completion script was not run");
        return;
    }
    let dir = TempDir::new();
    let file = write_and_check_syntax(
        &dir,
        "simpletcpunixrelay.fish",
        &script,
        "fish",
        "--no-execute",
    )
    .expect("fish runs");

    // What fish really offers after `simpletcpunixrelay -<TAB>`.
    let offered = Command::new("fish")
        .args([
            "--no-config",
            "-c",
            "source $argv[1]; complete -C'simpletcpunixrelay -'",
        ])
        .arg(&file)
        .env("HOME", &dir.0)
        .output()
        .unwrap();
    let offered = offered_options(&offered, |l| l.split('\t').next());
    assert_offers_all("fish", "simpletcpunixrelay -<TAB>", &offered, &options);
}
