//! Faults at the end of a connection: when the relay itself cuts a transfer
//! short (`--shutdown-timeout` elapsed, a second stop signal), the peer that
//! was still receiving must see a reset, never a clean end of stream that
//! would make a truncated transfer look complete.
//!
//! A Unix peer is not tested here: the kernel has no reset to send it. A
//! Unix peer sees an error only when the closing side leaves unread bytes
//! from it (ECONNRESET on its next call, EPIPE on later writes), and today's
//! relay already gets that, its plain close at exit leaving those bytes
//! unread; a peer that was only receiving sees a clean end whatever the relay
//! does. Neither case can tell a fixed relay from an unfixed one.

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// More than every buffer between the two ends can hold, so the transfer is
/// still under way when the relay cuts it.
const TOTAL: usize = 32 << 20;
/// What the receiver reads first, to know the transfer is under way.
const FIRST: usize = 64 << 10;
/// How long the relay may take to exit once the cut is due.
const QUICK: Duration = Duration::from_secs(5);

/// How the relay is made to cut the open connection.
#[derive(Clone, Copy)]
enum Cut {
    /// SIGTERM with `--shutdown-timeout 1s`, and the second elapses.
    ShutdownTimeout,
    /// SIGTERM, then SIGTERM again, with `--shutdown-timeout 1min`.
    SecondSignal,
}

/// How a stream ended for the side reading it.
#[derive(Debug, PartialEq)]
enum End {
    /// `read` returned 0: the peer closed cleanly.
    CleanEof,
    /// `read` failed with ECONNRESET.
    Reset,
    /// `read` failed otherwise.
    Error(ErrorKind),
    /// Nothing ended within the deadline.
    StillOpen,
}

/// Reads until the stream ends: how many bytes came, and how it ended.
fn read_to_the_end(stream: &mut dyn Read) -> (usize, End) {
    let deadline = Instant::now() + DEADLINE;
    let mut buffer = vec![0u8; 1 << 16];
    let mut count = 0;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (count, End::CleanEof),
            Ok(n) => count += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (count, End::StillOpen);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (count, End::Reset),
            Err(e) => return (count, End::Error(e.kind())),
        }
        if Instant::now() > deadline {
            return (count, End::StillOpen);
        }
    }
}

/// Writes up to [`TOTAL`] bytes, stopping at the first error.
fn send_until_cut(stream: &mut dyn Write) {
    let chunk = payload(1 << 20, 7);
    for _ in 0..TOTAL / chunk.len() {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
}

/// A TCP relay to `backend` set up for `cut`.
fn start_relay(cut: Cut, backend: &Backend) -> Relay {
    let timeout = match cut {
        Cut::ShutdownTimeout => "1s",
        Cut::SecondSignal => "1min",
    };
    Relay::start(&[
        "--shutdown-timeout",
        timeout,
        "127.0.0.1:0",
        &backend.connect_arg,
    ])
}

/// Stops the relay the `cut` way while a connection is open, and waits for
/// it to exit (every socket it had is closed then).
fn cut_and_wait(relay: &mut Relay, cut: Cut) {
    relay.signal(Signal::TERM);
    relay.wait_for_line("stopping");
    if let Cut::SecondSignal = cut {
        relay.signal(Signal::TERM);
    }
    assert!(
        relay.wait_exit_within(QUICK).is_some(),
        "the relay did not exit within {QUICK:?} of the cut; log:\n{}",
        relay.log()
    );
}

/// The backend sends [`TOTAL`] bytes; the client reads [`FIRST`], then stops
/// reading while the relay is cut, then reads on: how its stream ended.
fn client_downloading_through(cut: Cut) -> (usize, End) {
    let backend = Backend::tcp(|mut conn| send_until_cut(&mut *conn));
    let mut relay = start_relay(cut, &backend);
    let mut client = TcpStream::connect(relay.address()).unwrap();
    client.set_read_timeout(Some(QUICK)).unwrap();
    let mut first = vec![0u8; FIRST];
    client
        .read_exact(&mut first)
        .expect("the download is under way");

    cut_and_wait(&mut relay, cut);

    let (rest, end) = read_to_the_end(&mut client);
    (FIRST + rest, end)
}

/// The client sends [`TOTAL`] bytes; the backend reads [`FIRST`], then stops
/// reading while the relay is cut, then reads on: how its stream ended.
fn backend_receiving_through(cut: Cut) -> (usize, End) {
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let (result_tx, result) = mpsc::channel();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let backend = Backend::tcp(move |mut conn| {
        conn.set_read_timeout(Some(QUICK));
        let mut first = vec![0u8; FIRST];
        let started_ok = conn.read_exact(&mut first).is_ok();
        let _ = started_tx.send(started_ok);
        let _ = go_rx.lock().unwrap().recv_timeout(DEADLINE);
        let (rest, end) = read_to_the_end(&mut *conn);
        let _ = result_tx.send((FIRST + rest, end));
    });
    let mut relay = start_relay(cut, &backend);
    let mut client = TcpStream::connect(relay.address()).unwrap();
    let _writer = thread::spawn(move || send_until_cut(&mut client));
    assert_eq!(
        started.recv_timeout(DEADLINE),
        Ok(true),
        "the upload is under way"
    );

    cut_and_wait(&mut relay, cut);

    go.send(()).unwrap();
    result
        .recv_timeout(DEADLINE)
        .expect("the backend reads to the end")
}

fn assert_cut_is_a_reset(who: &str, (count, end): (usize, End)) {
    assert!(
        count < TOTAL,
        "test set-up: {who} got all {TOTAL} bytes, the transfer was not cut"
    );
    assert_eq!(
        end,
        End::Reset,
        "{who} must see a reset after {count} of {TOTAL} bytes, not a clean end"
    );
}

#[test]
fn the_shutdown_timeout_resets_a_tcp_client_mid_download() {
    assert_cut_is_a_reset(
        "the client",
        client_downloading_through(Cut::ShutdownTimeout),
    );
}

#[test]
fn the_shutdown_timeout_resets_a_tcp_backend_mid_upload() {
    assert_cut_is_a_reset(
        "the backend",
        backend_receiving_through(Cut::ShutdownTimeout),
    );
}

#[test]
fn a_second_sigterm_resets_a_tcp_client_mid_download() {
    assert_cut_is_a_reset("the client", client_downloading_through(Cut::SecondSignal));
}

#[test]
fn a_second_sigterm_resets_a_tcp_backend_mid_upload() {
    assert_cut_is_a_reset("the backend", backend_receiving_through(Cut::SecondSignal));
}
