//! Faults at start-up: nothing the relay does before its first accept may
//! block without a bound. A peer that never answers (a listener whose
//! backlog is full, a service manager whose notification queue is full)
//! makes the relay fail fast or carry on, never hang with no output.

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// "Within a few seconds": how long start-up may take in these tests.
const QUICK: Duration = Duration::from_secs(5);

/// Runs a relay command for at most `limit`: its exit status (`None` if it
/// was still running and had to be killed) and its standard error.
fn run_within(mut command: Command, limit: Duration) -> (Option<ExitStatus>, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn relay");
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_exit(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (status, reader.join().unwrap())
}

/// A Unix stream listener at `path` with a backlog of 0, and the one
/// connection that fills that backlog (never accepted).
fn full_listener(path: &std::path::Path) -> (Socket, UnixStream) {
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    let queued = UnixStream::connect(path).expect("the first connection is queued");
    // The backlog is full now: one more connection cannot even be queued.
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    probe.set_nonblocking(true).unwrap();
    let refused = probe.connect(&SockAddr::unix(path).unwrap()).unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::WouldBlock,
        "test set-up: the listener's backlog should be full"
    );
    (listener, queued)
}

#[test]
fn listening_where_a_live_socket_has_a_full_backlog_fails_at_once_with_already_in_use() {
    let dir = TempDir::new();
    let path = dir.join("X.sock");
    let (_listener, _queued) = full_listener(&path);
    let inode = std::fs::metadata(&path).unwrap().st_ino();

    let (status, stderr) = run_within(command(&[&dir.arg("X.sock"), "127.0.0.1:9"]), QUICK);

    let status = status.unwrap_or_else(|| {
        panic!("the relay was still running after {QUICK:?} (blocked probing X.sock); stderr:\n{stderr}")
    });
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("already in use"), "stderr:\n{stderr}");
    let after = std::fs::metadata(&path).expect("X.sock is still there");
    assert_eq!(after.st_ino(), inode, "X.sock must be left untouched");
}

#[test]
fn a_notify_socket_with_a_full_queue_does_not_keep_the_relay_from_serving() {
    let dir = TempDir::new();
    let notify_path = dir.join("notify");
    // The service manager's socket, never read from; filled to the brim.
    let _manager = UnixDatagram::bind(&notify_path).unwrap();
    let filler = UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    loop {
        match filler.send_to(b"STATUS=filler", &notify_path) {
            Ok(_) => queued += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling NOTIFY_SOCKET: {e}"),
        }
        assert!(queued < 100_000, "NOTIFY_SOCKET's queue never filled");
    }
    let backend = Backend::tcp(echo);
    let mut relay_command = command(&["127.0.0.1:0", &backend.connect_arg]);
    relay_command.env("NOTIFY_SOCKET", &notify_path);

    let relay = Relay::start_command(relay_command, 1);

    let mut client = std::net::TcpStream::connect(relay.address()).unwrap();
    client.set_read_timeout(Some(QUICK)).unwrap();
    client
        .write_all(b"served despite a full NOTIFY_SOCKET")
        .unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    match client.read_to_end(&mut reply) {
        Ok(_) => assert_eq!(reply, b"served despite a full NOTIFY_SOCKET"),
        Err(e) => panic!(
            "the client was not served within {QUICK:?} ({e}); relay log:\n{}",
            relay.log()
        ),
    }
}

/// Too few descriptors at start-up, whichever step runs out first (the
/// sandbox, the engine, the runtime's reactor, the first accept): the relay
/// either serves or exits 1 naming the cause, never panics (exit 101).
#[test]
fn too_few_descriptors_at_start_up_are_an_error_never_a_panic() {
    let backend = Backend::tcp(echo);
    let mut started = 0;
    for limit in 8..=24 {
        let mut command = command(&["127.0.0.1:0", &backend.connect_arg]);
        limit_open_files(&mut command, limit);
        let mut relay = Relay::start_command(command, 0);
        let mut status = None;
        wait_until(
            &format!("the relay with {limit} descriptors to start or fail"),
            || {
                status = relay.wait_exit_within(Duration::from_millis(10));
                status.is_some() || relay.log().contains("listening on")
            },
        );
        let serving = status.is_none();
        if serving {
            started += 1;
            relay.signal(Signal::TERM);
        }
        // The whole log, once the relay has exited.
        let (status, log) = relay.finish();
        if serving {
            assert!(status.success(), "with {limit} descriptors: {log}");
            continue;
        }
        assert_eq!(status.code(), Some(1), "with {limit} descriptors: {log}");
        assert!(
            log.contains("Too many open files") && !log.contains("panicked"),
            "with {limit} descriptors: {log}"
        );
    }
    assert!(started > 0, "24 descriptors are enough to start");
}
