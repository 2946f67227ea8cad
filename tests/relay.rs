//! The data path: every byte once and in order in both directions, large
//! and many transfers, half-close either way, resets, an unreachable
//! backend, backpressure against a slow reader, and `TCP_NODELAY`.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// The two directions that matter most: TCP clients to a Unix backend, and
/// Unix clients to a TCP backend. Returns LISTEN for the relay and the
/// backend, which runs `handler`.
fn setup(
    kind: Kind,
    dir: &TempDir,
    handler: impl Fn(Box<dyn Conn>) + Send + Sync + 'static,
) -> (String, Backend) {
    match kind {
        Kind::TcpToUnix => (
            "127.0.0.1:0".into(),
            Backend::unix(&dir.join("backend.sock"), handler),
        ),
        Kind::UnixToTcp => (dir.arg("relay.sock"), Backend::tcp(handler)),
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    TcpToUnix,
    UnixToTcp,
}

const KINDS: [Kind; 2] = [Kind::TcpToUnix, Kind::UnixToTcp];

/// A backend that sends `reply` while it reads everything the client sends,
/// then reports what it read.
fn sink_and_source(
    reply: Arc<Vec<u8>>,
    report: mpsc::Sender<Vec<u8>>,
) -> impl Fn(Box<dyn Conn>) + Send + Sync {
    move |conn: Box<dyn Conn>| {
        let mut writer = conn.try_clone_box();
        let reply = reply.clone();
        let sender = thread::spawn(move || {
            writer.write_all(&reply).unwrap();
            writer.shutdown_write();
        });
        let mut reader = conn;
        let got = read_to_end(&mut *reader);
        sender.join().unwrap();
        let _ = report.send(got);
    }
}

/// Asserts two large byte strings are equal without printing them.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: got {} bytes (hash {:016x}), want {} bytes (hash {:016x})",
        got.len(),
        hash(got),
        want.len(),
        hash(want)
    );
}

fn large_transfer(kind: Kind) {
    let dir = TempDir::new();
    let up = payload(32 * MIB, 1);
    let down = Arc::new(payload(32 * MIB, 2));
    let (report, reports) = mpsc::channel();
    let (listen, backend) = setup(kind, &dir, sink_and_source(down.clone(), report));
    let relay = Relay::start(&[&listen, &backend.connect_arg]);
    let received = exchange(connect(relay.address()), up.clone());
    assert_same(&received, &down, "client received");
    let backend_received = reports.recv_timeout(DEADLINE).unwrap();
    assert_same(&backend_received, &up, "backend received");
}

#[test]
fn large_payload_both_directions_tcp_to_unix() {
    large_transfer(Kind::TcpToUnix);
}

#[test]
fn large_payload_both_directions_unix_to_tcp() {
    large_transfer(Kind::UnixToTcp);
}

#[test]
fn many_concurrent_connections_each_get_their_own_bytes() {
    const CLIENTS: usize = 64;
    for kind in KINDS {
        let dir = TempDir::new();
        let (listen, backend) = setup(kind, &dir, digest);
        let relay = Relay::start(&[&listen, &backend.connect_arg]);
        // Every client connects first, then all send at once.
        let all_connected = Arc::new(Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let address = relay.address().to_string();
                let all_connected = all_connected.clone();
                thread::spawn(move || {
                    let conn = connect(&address);
                    all_connected.wait();
                    let data = payload(16 * 1024 + i * 4099, 100 + i as u64);
                    let reply = exchange(conn, data.clone());
                    assert_eq!(
                        String::from_utf8(reply).unwrap(),
                        digest_of(&data),
                        "{kind:?} client {i}"
                    );
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        assert_eq!(backend.connections(), CLIENTS);
    }
}

#[test]
fn small_writes_of_every_size_arrive_intact_and_in_order() {
    for kind in KINDS {
        let dir = TempDir::new();
        let (listen, backend) = setup(kind, &dir, digest);
        let relay = Relay::start(&[&listen, &backend.connect_arg]);
        let data = payload(600_000, 8);
        let mut conn = connect(relay.address());
        // Writes of 1, 2, 3, … 1500 bytes, over and over: many small segments.
        let (mut sent, mut size) = (0, 1);
        while sent < data.len() {
            let end = (sent + size).min(data.len());
            conn.write_all(&data[sent..end]).unwrap();
            sent = end;
            size = size % 1500 + 1;
        }
        conn.shutdown_write();
        assert_eq!(
            read_to_end(&mut *conn),
            digest_of(&data).into_bytes(),
            "{kind:?}"
        );
    }
}

/// Small messages are copied rather than spliced. When the backend stops
/// reading, a copied message that only partly fits waits in a buffer, and
/// the next ones wait behind it: every byte arrives, in order, once the
/// backend reads again.
#[test]
fn small_messages_to_a_backend_that_stops_reading_arrive_intact() {
    for kind in KINDS {
        let dir = TempDir::new();
        let (started, go) = mpsc::channel::<()>();
        let (report, got) = mpsc::channel();
        let go = std::sync::Mutex::new(go);
        let (listen, backend) = setup(kind, &dir, move |mut conn: Box<dyn Conn>| {
            // Reads nothing until the client has filled every buffer.
            let _ = go.lock().unwrap().recv();
            let _ = report.send(read_to_end(&mut *conn));
        });
        let relay = Relay::start(&[&listen, &backend.connect_arg]);
        let data = Arc::new(payload(8 * MIB, 9));
        let conn = connect(relay.address());
        let mut writer = conn.try_clone_box();
        let written = Arc::new(AtomicU64::new(0));
        let (counter, all) = (written.clone(), data.clone());
        let sender = thread::spawn(move || {
            // 512-byte messages, paced, so that the relay reads each one
            // on its own: small ones, which it copies.
            for message in all.chunks(512) {
                writer.write_all(message).unwrap();
                counter.fetch_add(message.len() as u64, Ordering::SeqCst);
                thread::sleep(Duration::from_micros(50));
            }
            writer.shutdown_write();
        });
        // Every buffer on the way is full when the writer stops making
        // progress for a while.
        let mut last = u64::MAX;
        loop {
            let now = written.load(Ordering::SeqCst);
            if now == last || now == data.len() as u64 {
                break;
            }
            last = now;
            thread::sleep(Duration::from_millis(300));
        }
        started.send(()).unwrap();
        let received = got.recv_timeout(DEADLINE).expect("the backend got an EOF");
        sender.join().unwrap();
        assert_same(&received, &data, &format!("{kind:?}"));
        drop(conn);
    }
}

/// A backend that answers only after the client's EOF: the digest line of
/// what it got, then `extra` bytes.
fn reply_after_eof(extra: usize) -> impl Fn(Box<dyn Conn>) + Send + Sync {
    move |mut conn: Box<dyn Conn>| {
        let got = Digest::of_stream(&mut *conn);
        let mut reply = got.line().into_bytes();
        reply.extend(payload(extra, got.len));
        let _ = conn.write_all(&reply);
    }
}

#[test]
fn client_half_close_still_gets_the_reply() {
    for kind in KINDS {
        for (request, extra) in [(b"question".to_vec(), 0), (payload(MIB, 3), 8 * MIB)] {
            let dir = TempDir::new();
            let (listen, backend) = setup(kind, &dir, reply_after_eof(extra));
            let relay = Relay::start(&[&listen, &backend.connect_arg]);
            let reply = exchange(connect(relay.address()), request.clone());
            let mut want = digest_of(&request).into_bytes();
            want.extend(payload(extra, request.len() as u64));
            assert_same(
                &reply,
                &want,
                &format!("{kind:?}, reply of {extra} extra bytes"),
            );
        }
    }
}

#[test]
fn backend_half_close_lets_the_client_keep_sending() {
    for kind in KINDS {
        let dir = TempDir::new();
        let (report, reports) = mpsc::channel();
        let (listen, backend) = setup(kind, &dir, move |mut conn: Box<dyn Conn>| {
            conn.write_all(b"goodbye\n").unwrap();
            conn.shutdown_write();
            let got = read_to_end(&mut *conn);
            let _ = report.send(got);
        });
        let mut relay = Relay::start(&["-v", &listen, &backend.connect_arg]);
        let mut conn = connect(relay.address());
        // The backend's EOF arrives as an EOF, after its bytes...
        assert_eq!(read_to_end(&mut *conn), b"goodbye\n");
        // ...and the client's direction is still open: all of this arrives.
        let late = payload(2 * MIB, 4);
        conn.write_all(&late).unwrap();
        conn.shutdown_write();
        let got = reports.recv_timeout(DEADLINE).unwrap();
        assert_same(
            &got,
            &late,
            &format!("{kind:?}: bytes sent after the backend's EOF"),
        );
        assert_eq!(
            conn.read(&mut [0u8; 16]).unwrap(),
            0,
            "then the connection ends"
        );
        relay.wait_for_line(&format!("{} bytes up, 8 bytes down", 2 * MIB));
    }
}

#[test]
fn bytes_and_eof_sent_while_the_relay_is_still_connecting_are_delivered() {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::unix::net::UnixStream;
    let dir = TempDir::new();
    let path = dir.join("backend.sock");
    // A backend whose accept queue is full (backlog 0, one connection
    // waiting): the relay's connect has to wait until there is room.
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    let queued = UnixStream::connect(&path).unwrap();
    let relay = Relay::start(&["127.0.0.1:0", path.to_str().unwrap()]);
    let mut client = connect(relay.address());
    let data = payload(100_000, 12);
    client.write_all(&data).unwrap();
    client.shutdown_write();
    // Give the relay time to be stuck connecting (not a readiness wait:
    // the point is that the client is done before the backend answers).
    thread::sleep(Duration::from_millis(200));
    // Accepting the waiting connection makes room for the relay's.
    drop(listener.accept().unwrap());
    drop(queued);
    let (backend_side, _) = listener.accept().unwrap();
    let backend_side: UnixStream = std::os::fd::OwnedFd::from(backend_side).into();
    thread::spawn(move || digest(Box::new(backend_side)));
    assert_eq!(read_to_end(&mut *client), digest_of(&data).into_bytes());
}

/// A backend that echoes and reports when its side of a connection ended
/// (by EOF or error) after it had seen `hello`.
fn echo_reporting_end(
    started: mpsc::Sender<()>,
    ended: mpsc::Sender<Instant>,
) -> impl Fn(Box<dyn Conn>) + Send + Sync {
    move |mut conn: Box<dyn Conn>| {
        let mut buffer = [0u8; 65536];
        let mut first = true;
        loop {
            match conn.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if first {
                        first = false;
                        let _ = started.send(());
                    }
                    if conn.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ended.send(Instant::now());
        conn.shutdown_write();
    }
}

#[test]
fn a_client_reset_closes_the_backend_side() {
    for backend_kind in ["tcp", "unix"] {
        let dir = TempDir::new();
        let (started, starts) = mpsc::channel();
        let (ended, ends) = mpsc::channel();
        let handler = echo_reporting_end(started, ended);
        let backend = match backend_kind {
            "tcp" => Backend::tcp(handler),
            _ => Backend::unix(&dir.join("backend.sock"), handler),
        };
        let mut relay = Relay::start(&["-v", "127.0.0.1:0", &backend.connect_arg]);
        let mut client = connect(relay.address());
        client.write_all(b"hello").unwrap();
        starts.recv_timeout(DEADLINE).unwrap();
        assert_eq!(read_exactly(&mut *client, 5), b"hello");
        client.abort();
        let reset_at = Instant::now();
        drop(client);
        let ended_at = ends
            .recv_timeout(DEADLINE)
            .expect("the backend's connection should end");
        let delay = ended_at.saturating_duration_since(reset_at);
        assert!(
            delay < Duration::from_secs(2),
            "{backend_kind} backend saw the end after {delay:?}"
        );
        relay.wait_for_line("5 bytes up, 5 bytes down");
        // The relay goes on serving.
        assert_eq!(
            exchange(connect(relay.address()), b"again".to_vec()),
            b"again"
        );
        assert!(relay.running());
    }
}

#[test]
fn a_backend_reset_closes_the_client_side() {
    for listen_kind in ["tcp", "unix"] {
        let dir = TempDir::new();
        let backend = Backend::tcp(|mut conn: Box<dyn Conn>| {
            let mut hello = [0u8; 5];
            conn.read_exact(&mut hello).unwrap();
            if &hello == b"reset" {
                conn.abort();
                drop(conn);
            } else {
                conn.write_all(&hello).unwrap();
                echo(conn);
            }
        });
        let listen = if listen_kind == "tcp" {
            "127.0.0.1:0".to_string()
        } else {
            dir.arg("relay.sock")
        };
        let relay = Relay::start(&[&listen, &backend.connect_arg]);
        let mut client = connect(relay.address());
        client.write_all(b"reset").unwrap();
        let started = Instant::now();
        let (bytes, _eof) = read_until_closed(&mut *client);
        let delay = started.elapsed();
        assert!(bytes.is_empty(), "{listen_kind}: {bytes:?}");
        assert!(
            delay < Duration::from_secs(2),
            "{listen_kind} client saw the end after {delay:?}"
        );
        // A write towards the closed connection fails sooner or later.
        let mut write_failed = false;
        for _ in 0..100 {
            if client.write_all(&[0u8; 65536]).is_err() {
                write_failed = true;
                break;
            }
        }
        assert!(
            write_failed,
            "{listen_kind}: the client's side should be closed entirely"
        );
        assert_eq!(
            exchange(connect(relay.address()), b"again, fine".to_vec()),
            b"again, fine"
        );
    }
}

#[test]
fn refused_backend_closes_the_client_with_no_bytes_and_the_relay_goes_on() {
    // A TCP port nobody listens on yet: bound, so nothing else takes it,
    // but not listening, so connects are refused.
    let port = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    port.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let address = port.local_addr().unwrap().as_socket().unwrap();
    let mut relay = Relay::start(&["127.0.0.1:0", &address.to_string()]);
    let started = Instant::now();
    let (bytes, _) = read_until_closed(&mut *connect(relay.address()));
    assert!(bytes.is_empty(), "no bytes for the client: {bytes:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed at once, not after {:?}",
        started.elapsed()
    );
    let warning = relay.wait_for_line("cannot connect");
    assert!(
        warning.to_lowercase().contains("refused"),
        "the warning names the reason: {warning}"
    );
    assert!(
        warning.contains(&address.to_string()),
        "the warning names CONNECT: {warning}"
    );
    assert!(relay.running());
    // Once the backend is up at that address, a new connection works.
    port.listen(16).unwrap();
    let _backend = Backend::tcp_on(port.into(), echo);
    assert_eq!(
        exchange(connect(relay.address()), b"up now".to_vec()),
        b"up now"
    );
}

#[test]
fn backend_down_then_up_on_a_unix_socket() {
    let dir = TempDir::new();
    let backend_path = dir.join("backend.sock");
    // A stale socket file: connecting to it is refused.
    drop(std::os::unix::net::UnixListener::bind(&backend_path).unwrap());
    // With -c 1, a connection that never reached CONNECT must free its slot.
    let mut relay = Relay::start(&[
        "-c",
        "1",
        &dir.arg("relay.sock"),
        backend_path.to_str().unwrap(),
    ]);
    for _ in 0..3 {
        let (bytes, _) = read_until_closed(&mut *connect(relay.address()));
        assert!(bytes.is_empty(), "{bytes:?}");
        let warning = relay.wait_for_line("cannot connect");
        assert!(warning.to_lowercase().contains("refused"), "{warning}");
    }
    std::fs::remove_file(&backend_path).unwrap();
    let _backend = Backend::unix(&backend_path, digest);
    let data = payload(100_000, 5);
    assert_eq!(
        exchange(connect(relay.address()), data.clone()),
        digest_of(&data).into_bytes()
    );
}

const BLOCK: usize = MIB;
const BLOCKS: usize = 256;

/// Writes `BLOCKS` copies of `block` as fast as the socket takes them, each
/// stamped with its number in its first 8 bytes; counts bytes in `written`.
fn write_blocks(conn: &mut dyn Conn, block: &[u8], written: &AtomicU64) {
    let mut data = block.to_vec();
    for k in 0..BLOCKS {
        data[..8].copy_from_slice(&(k as u64).to_le_bytes());
        let mut rest = &data[..];
        while !rest.is_empty() {
            match conn.write(rest) {
                Ok(n) => {
                    rest = &rest[n..];
                    written.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(_) => return,
            }
        }
    }
    conn.shutdown_write();
}

/// Reads what [`write_blocks`] wrote: every block, in order, intact, then EOF.
fn read_blocks(conn: &mut dyn Conn, block: &[u8]) -> Result<(), String> {
    let mut buffer = vec![0u8; BLOCK];
    for k in 0..BLOCKS {
        conn.read_exact(&mut buffer)
            .map_err(|e| format!("block {k}: {e}"))?;
        let stamp = u64::from_le_bytes(buffer[..8].try_into().unwrap());
        if stamp != k as u64 || buffer[8..] != block[8..] {
            return Err(format!("block {k} out of order or damaged (stamp {stamp})"));
        }
    }
    match conn.read(&mut buffer) {
        Ok(0) => Ok(()),
        other => Err(format!("expected EOF after the last block: {other:?}")),
    }
}

/// Waits until `written` has not moved for half a second: the writer is
/// blocked. Returns how far it got.
fn wait_until_stalled(written: &AtomicU64) -> u64 {
    let mut last = written.load(Ordering::SeqCst);
    let mut still_since = Instant::now();
    let deadline = Instant::now() + DEADLINE;
    while still_since.elapsed() < Duration::from_millis(500) {
        assert!(
            Instant::now() < deadline,
            "the writer never stopped writing"
        );
        thread::sleep(Duration::from_millis(50));
        let now = written.load(Ordering::SeqCst);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
    last
}

/// The writer is blocked well before the end, and the relay holds little.
fn assert_backpressure(relay: &Relay, written: u64, who: &str) {
    let total = (BLOCK * BLOCKS) as u64;
    let rss = relay.vm_rss_kib();
    eprintln!("{who} blocked after {written} of {total} bytes; relay VmRSS {rss} KiB");
    assert!(
        written < total / 4 * 3,
        "{who} should be blocked well before the end: {written} of {total} bytes written"
    );
    assert!(
        rss < 64 * 1024,
        "the relay's memory should stay bounded: VmRSS {rss} KiB"
    );
}

#[test]
fn a_slow_client_slows_the_backend_and_memory_stays_bounded() {
    let block = Arc::new(payload(BLOCK, 6));
    let written = Arc::new(AtomicU64::new(0));
    let (backend_block, backend_written) = (block.clone(), written.clone());
    let backend = Backend::tcp(move |mut conn: Box<dyn Conn>| {
        write_blocks(&mut *conn, &backend_block, &backend_written);
    });
    let relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    let mut client = connect(relay.address());
    backend.wait_connections(1);
    // The client reads nothing until the backend is stuck.
    assert_backpressure(&relay, wait_until_stalled(&written), "the backend");
    read_blocks(&mut *client, &block).unwrap();
    assert!(relay.vm_rss_kib() < 64 * 1024);
}

#[test]
fn a_slow_backend_slows_the_client_and_memory_stays_bounded() {
    let dir = TempDir::new();
    let block = Arc::new(payload(BLOCK, 7));
    let (go, go_signal) = mpsc::channel::<()>();
    let go_signal = std::sync::Mutex::new(go_signal);
    let (report, reports) = mpsc::channel();
    let backend_block = block.clone();
    let backend = Backend::tcp(move |mut conn: Box<dyn Conn>| {
        // Reads nothing until told to.
        let _ = go_signal.lock().unwrap().recv();
        let _ = report.send(read_blocks(&mut *conn, &backend_block));
    });
    let relay = Relay::start(&[&dir.arg("relay.sock"), &backend.connect_arg]);
    let written = Arc::new(AtomicU64::new(0));
    let (client_block, client_written) = (block.clone(), written.clone());
    let mut client = connect(relay.address());
    let writer = thread::spawn(move || write_blocks(&mut *client, &client_block, &client_written));
    backend.wait_connections(1);
    assert_backpressure(&relay, wait_until_stalled(&written), "the client");
    go.send(()).unwrap();
    reports.recv_timeout(DEADLINE).unwrap().unwrap();
    writer.join().unwrap();
    assert!(relay.vm_rss_kib() < 64 * 1024);
}

#[test]
fn a_client_reset_unblocks_a_backend_stuck_writing() {
    let block = Arc::new(payload(BLOCK, 10));
    let written = Arc::new(AtomicU64::new(0));
    let (ended, ends) = mpsc::channel();
    let (backend_block, backend_written) = (block.clone(), written.clone());
    let backend = Backend::tcp(move |mut conn: Box<dyn Conn>| {
        write_blocks(&mut *conn, &backend_block, &backend_written);
        let _ = ended.send(Instant::now());
    });
    let relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    let client = connect(relay.address());
    backend.wait_connections(1);
    let stalled_at = wait_until_stalled(&written);
    client.abort();
    let reset_at = Instant::now();
    drop(client);
    let ended_at = ends
        .recv_timeout(DEADLINE)
        .expect("the backend's writes fail");
    let delay = ended_at.saturating_duration_since(reset_at);
    assert!(
        delay < Duration::from_secs(2),
        "the backend was unblocked after {delay:?}"
    );
    let total = (BLOCK * BLOCKS) as u64;
    assert!(
        written.load(Ordering::SeqCst) < total,
        "stopped by an error, not done (stalled at {stalled_at})"
    );
    // The relay goes on: a new client gets the backend's first block.
    let mut again = connect(relay.address());
    let first = read_exactly(&mut *again, BLOCK);
    assert!(
        first[..8] == [0; 8] && first[8..] == block[8..],
        "a new client is served"
    );
}

#[test]
fn a_backend_reset_unblocks_a_client_stuck_writing() {
    let dir = TempDir::new();
    let (go, go_signal) = mpsc::channel::<()>();
    let go_signal = std::sync::Mutex::new(go_signal);
    let backend = Backend::tcp(move |conn: Box<dyn Conn>| {
        // Reads nothing, then resets.
        let _ = go_signal.lock().unwrap().recv();
        conn.abort();
    });
    let relay = Relay::start(&[&dir.arg("relay.sock"), &backend.connect_arg]);
    let block = payload(BLOCK, 11);
    let written = Arc::new(AtomicU64::new(0));
    let client_written = written.clone();
    let mut client = connect(relay.address());
    let (ended, ends) = mpsc::channel();
    thread::spawn(move || {
        write_blocks(&mut *client, &block, &client_written);
        let _ = ended.send(Instant::now());
    });
    backend.wait_connections(1);
    wait_until_stalled(&written);
    let reset_at = Instant::now();
    go.send(()).unwrap();
    let ended_at = ends
        .recv_timeout(DEADLINE)
        .expect("the client's writes fail");
    let delay = ended_at.saturating_duration_since(reset_at);
    assert!(
        delay < Duration::from_secs(2),
        "the client was unblocked after {delay:?}"
    );
    assert!(written.load(Ordering::SeqCst) < (BLOCK * BLOCKS) as u64);
}

#[test]
fn tcp_sockets_on_both_sides_use_nodelay() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    let mut client = connect(relay.address());
    // A round trip: the relay is past connecting and is relaying.
    client.write_all(b"x").unwrap();
    assert_eq!(read_exactly(&mut *client, 1), b"x");
    let sockets = match process_sockets(relay.pid()) {
        Ok(sockets) => sockets,
        Err(e) => {
            skip(&format!(
                "cannot inspect the relay's sockets (pidfd_getfd: {e})"
            ));
            return;
        }
    };
    let connected: Vec<_> = sockets
        .iter()
        .filter(|s| s.local_addr().ok().and_then(|a| a.as_socket()).is_some())
        .filter(|s| !s.is_listener().unwrap())
        .collect();
    assert_eq!(
        connected.len(),
        2,
        "one TCP socket to the client, one to the backend"
    );
    for socket in connected {
        let local = socket.local_addr().unwrap().as_socket().unwrap();
        let peer = socket.peer_addr().unwrap().as_socket().unwrap();
        assert!(
            socket.tcp_nodelay().unwrap(),
            "TCP_NODELAY on the relay's socket {local} -> {peer}"
        );
    }
}
