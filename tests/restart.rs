//! Restarting without refusing a client: the relay hands its listeners to
//! systemd's file descriptor store (`FDSTORE=1`, `--fd-store`), and the next
//! instance, passed them back in `LISTEN_FDS`/`LISTEN_FDNAMES`, adopts them
//! instead of binding again. Here the test plays the service manager: it
//! keeps what the relay stores, and starts the next instance with it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A manager whose store holds 100 descriptors.
fn manager() -> Manager {
    Manager::with_max(100)
}

/// A manager whose store holds 100 descriptors, and says so (`$FDSTORE`, as
/// systemd 254 and later do).
fn manager_saying_its_size() -> Manager {
    let mut manager = manager();
    manager.size = Some("100".into());
    manager
}

/// Asks `relay` to hand over (SIGUSR2, what `systemctl reload` sends),
/// checks that it exits asking to be restarted (status 3), and waits until
/// the manager has processed all it sent; its log.
fn hand_over(manager: &mut Manager, relay: Relay) -> String {
    relay.signal(Signal::USR2);
    let log = exits_for_a_restart(relay);
    manager.settle();
    log
}

#[test]
fn a_unix_listener_survives_a_restart_and_the_client_in_between_is_served() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let socket = dir.arg("relay.sock");
    let args = ["--fd-store", &socket, &backend.connect_arg];
    let mut manager = manager();
    let mut first = manager.start(&args);
    assert_eq!(manager.names(), ["listener"], "one listener stored");
    let inode = std::fs::metadata(&socket).unwrap().ino();
    assert_eq!(exchange(connect(&socket), b"before".to_vec()), b"before");

    first.signal(Signal::TERM);
    assert!(first.wait_exit().success());
    assert_eq!(
        std::fs::metadata(&socket).map(|m| m.ino()).ok(),
        Some(inode),
        "the socket file stays for the next instance"
    );
    // Nobody relays now, yet the client is not refused: it waits in the
    // stored listener's backlog.
    let mut waiting = UnixStream::connect(&socket).expect("not refused during the restart");
    waiting.write_all(b"during the restart").unwrap();
    waiting.shutdown(std::net::Shutdown::Write).unwrap();

    let second = manager.start(&args);
    assert!(second.log().contains("adopted"), "{}", second.log());
    let mut reply = Vec::new();
    waiting.set_read_timeout(Some(DEADLINE)).unwrap();
    waiting.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"during the restart");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        inode,
        "adopted, not bound again"
    );
    assert_eq!(second.address(), first.address());
}

#[test]
fn a_tcp_listener_on_port_0_keeps_its_port_across_a_restart() {
    let backend = Backend::tcp(echo);
    let args = ["--fd-store", "127.0.0.1:0", &backend.connect_arg];
    let mut manager = manager();
    let mut first = manager.start(&args);
    let address = first.address().to_string();
    first.signal(Signal::TERM);
    assert!(first.wait_exit().success());
    let waiting = std::net::TcpStream::connect(&address).expect("not refused during the restart");
    let second = manager.start(&args);
    assert_eq!(
        second.address(),
        address,
        "the same listener, the same port"
    );
    assert_eq!(exchange(Box::new(waiting), b"queued".to_vec()), b"queued");
}

#[test]
fn without_fd_store_nothing_is_stored_and_the_socket_file_goes() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let socket = dir.arg("relay.sock");
    let mut manager = manager();
    let mut relay = manager.start(&[&socket, &backend.connect_arg]);
    assert!(manager.names().is_empty());
    relay.signal(Signal::TERM);
    assert!(relay.wait_exit().success());
    assert!(!std::path::Path::new(&socket).exists());
}

#[test]
fn a_stored_listener_that_listen_no_longer_names_is_closed_with_its_file_and_leaves_the_store() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut manager = manager();
    let old = dir.arg("a.sock");
    let mut first = manager.start(&["--fd-store", &old, &backend.connect_arg]);
    first.signal(Signal::TERM);
    assert!(first.wait_exit().success());
    // A client arrives during the restart, at the old path.
    let mut waiting = UnixStream::connect(&old).expect("the stored listener's backlog");
    let second = manager.start(&["--fd-store", &dir.arg("b.sock"), &backend.connect_arg]);
    assert!(!second.log().contains("adopted"), "{}", second.log());
    assert!(
        second
            .log()
            .contains("closed 1 stored listener that LISTEN no longer names"),
        "{}",
        second.log()
    );
    assert!(
        !std::path::Path::new(&old).exists(),
        "the old socket file went with its listener"
    );
    waiting.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    match waiting.read(&mut byte) {
        Ok(0) | Err(_) => {}
        Ok(_) => panic!("bytes from a stale listener"),
    }
    assert_eq!(exchange(connect(&dir.arg("b.sock")), b"b".to_vec()), b"b");
    manager.settle();
    assert_eq!(
        manager.names(),
        ["listener"],
        "only the new listener is stored"
    );
}

#[test]
fn a_second_hand_over_request_during_a_drain_cuts_nothing() {
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    let mut client = exchanged(&relay);
    relay.signal(Signal::USR2);
    relay.wait_for_line("no file descriptor store");
    relay.signal(Signal::USR2);
    relay.wait_for_line("ignored");
    client.write_all(b"still").unwrap();
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply).expect("still relayed");
    assert_eq!(&reply, b"still");
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("a clean end, not a cut");
    let log = exits_for_a_restart(relay);
    assert!(!log.contains("cutting"), "{log}");
}

#[test]
fn an_instance_killed_before_the_store_forgot_its_connections_leaves_them_cut_not_ended() {
    let (backends, backend_address) = held_backend();
    let args = ["--fd-store", "127.0.0.1:0", &backend_address];
    let mut manager = manager();
    let (mut client, mut backend) = stored_connection(&mut manager, &args, &backends, b"part");

    // PID 1 is busy: the next instance's removals wait in the socket.
    manager.pause();
    let mut second = Relay::start_command(manager.command(&args), 1);
    manager.spawned();
    assert!(
        second.log().contains("took over 1 connection"),
        "{}",
        second.log()
    );
    second.signal(Signal::KILL);
    let _ = second.wait_exit();
    // Processing the removal closes systemd's copies, the last ones.
    manager.resume();
    manager.settle();
    both_see_a_reset(&mut client, &mut backend);
}

#[test]
fn a_hand_over_right_after_an_adoption_waits_for_the_removals_and_loses_nothing() {
    let backend = Backend::tcp(echo);
    let args = ["--fd-store", "127.0.0.1:0", &backend.connect_arg];
    let mut manager = manager_saying_its_size();
    let first = manager.start(&args);
    let mut clients: Vec<TcpStream> = (0..8).map(|_| exchanged(&first)).collect();
    let _ = hand_over(&mut manager, first);

    // PID 1 is late: the next instance's 16 removals fill the notification
    // socket (net.unix.max_dgram_qlen, 10 here) and wait, and a reload
    // comes at once. Its store messages must not overtake those removals:
    // systemd would drop each socket it still holds under its old name as
    // a duplicate, and the removal would then delete the only copy.
    manager.pause();
    let second = Relay::start_command(manager.command(&args), 1);
    manager.spawned();
    assert!(
        second.log().contains("took over 8 connections"),
        "{}",
        second.log()
    );
    second.signal(Signal::USR2);
    // Long enough for a relay that does not wait to send what it stores.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    manager.resume();
    let log = exits_for_a_restart(second);
    assert!(log.contains("handed 8 connections"), "{log}");
    manager.settle();
    assert!(manager.refused().is_empty(), "{:?}", manager.refused());
    let third = manager.start(&args);
    assert!(
        third.log().contains("took over 8 connections"),
        "{}",
        third.log()
    );
    for client in &mut clients {
        client.write_all(b"q").unwrap();
        let mut byte = [0u8; 1];
        client
            .read_exact(&mut byte)
            .expect("every connection still relayed");
        assert_eq!(&byte, b"q");
    }
}

/// The TCP state of the IPv4 loopback socket bound to `port`, as
/// /proc/net/tcp lists it (`None`: not listed, as a closed socket is not).
fn tcp_state(port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields[1].rsplit(':').next()?;
        (u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| u8::from_str_radix(fields[3], 16).ok())
            .flatten()
    })
}

#[test]
fn a_connection_whose_backend_finished_while_its_answer_waits_is_handed_over_whole() {
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let (backends, backend_address) = held_backend();
    let args = ["--fd-store", &socket, &backend_address];
    let mut manager = manager();
    let first = manager.start(&args);
    let mut client = UnixStream::connect(&socket).unwrap();
    let (mut backend, relay_side) = backends.accept().unwrap();
    client.write_all(b"question").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut question = Vec::new();
    backend.read_to_end(&mut question).unwrap();
    assert_eq!(question, b"question");
    // The answer, more than the client's socket takes while it does not
    // read: the rest waits in the relay's pipe. Then the backend is done.
    let answer = payload(400 << 10, 7);
    backend.write_all(&answer).unwrap();
    drop(backend);
    // Both ends of the relay's backend socket have ended: it has no peer
    // any more (getpeername says ENOTCONN), yet its connection is not over.
    wait_until("the relay's backend socket to close", || {
        !matches!(tcp_state(relay_side.port()), Some(0x01 | 0x05 | 0x08))
    });
    let log = hand_over(&mut manager, first);
    assert!(log.contains("handed 1 connection"), "{log}");
    let second = manager.start(&args);
    assert!(
        second.log().contains("took over 1 connection"),
        "{}",
        second.log()
    );
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert!(
        got == answer,
        "the whole answer, then the end: {} bytes",
        got.len()
    );
}

#[test]
fn more_connections_than_listen_fdnames_can_name_are_drained_not_stored() {
    // systemd passes the store's names in one environment string, which
    // Linux limits to 128 KiB: a hand-over of 1500 connections would leave
    // systemd unable to start the next instance at all (E2BIG).
    let backend = Backend::tcp(echo);
    let args = [
        "--fd-store",
        "-c",
        "2000",
        "127.0.0.1:0",
        &backend.connect_arg,
    ];
    let mut manager = Manager::with_max(10_000);
    let mut relay = manager.start(&args);
    let mut clients: Vec<TcpStream> = (0..1500).map(|_| exchanged(&relay)).collect();
    relay.signal(Signal::USR2);
    let line = relay.wait_for_line("not stored");
    assert!(line.contains("names would take"), "{line}");
    for client in &mut clients {
        client.write_all(b"w").unwrap();
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).expect("still relayed here");
        client.shutdown(Shutdown::Write).unwrap();
    }
    drop(clients);
    let _ = exits_for_a_restart(relay);
    manager.settle();
    assert_eq!(manager.names(), ["listener"], "no connection stored");
}

#[test]
fn forged_descriptors_under_a_connections_name_are_refused_and_removed_from_the_store() {
    use std::os::fd::OwnedFd;
    let (backends, backend_address) = held_backend();
    let mut manager = manager();
    let backend_socket = || {
        let socket = TcpStream::connect(&backend_address).unwrap();
        socket.set_nonblocking(true).unwrap();
        OwnedFd::from(socket)
    };
    let state = "client,v=1,up=0,down=0,ended=-,copy=-,age=0,idle=0";
    // A pipe with bytes in it, stored as the client socket.
    let (read, write) = rustix::pipe::pipe().unwrap();
    rustix::io::write(&write, b"foreign").unwrap();
    manager.put(&format!("conn.1.1.{state}"), read);
    manager.put("conn.1.1.backend", backend_socket());
    // A blocking socket, with bytes waiting.
    let (blocking, peer) = UnixStream::pair().unwrap();
    (&peer).write_all(b"foreign").unwrap();
    manager.put(&format!("conn.1.2.{state}"), OwnedFd::from(blocking));
    manager.put("conn.1.2.backend", backend_socket());
    // The two ends of two different pipes for the bytes in flight.
    let (client, _client_peer) = UnixStream::pair().unwrap();
    client.set_nonblocking(true).unwrap();
    let (one_read, one_write) = rustix::pipe::pipe().unwrap();
    let (other_read, other_write) = rustix::pipe::pipe().unwrap();
    rustix::io::write(&other_write, b"foreign").unwrap();
    for fd in [&one_read, &one_write, &other_read, &other_write] {
        rustix::io::ioctl_fionbio(fd, true).unwrap();
    }
    manager.put(&format!("conn.1.3.{state}"), OwnedFd::from(client));
    manager.put("conn.1.3.backend", backend_socket());
    manager.put("conn.1.3.up.read", one_read);
    manager.put("conn.1.3.up.write", other_write);
    drop((one_write, other_read));

    let relay = manager.start(&["--fd-store", "127.0.0.1:0", &backend_address]);
    let log = relay.log();
    for (id, why) in [
        ("conn.1.1", "has a client socket that is not a socket"),
        ("conn.1.2", "has a client socket that is blocking"),
        ("conn.1.3", "two ends belong to different pipes"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(id) && l.contains(why)),
            "{id}: {why}: {log}"
        );
    }
    assert!(!log.contains("took over"), "{log}");
    manager.settle();
    assert_eq!(manager.names(), ["listener"], "every forged entry removed");
    // The backend hears nothing foreign: each connection just ends.
    drop(manager);
    backends.set_nonblocking(false).unwrap();
    for _ in 0..3 {
        let (mut conn, _) = backends.accept().unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut seen = Vec::new();
        let _ = conn.read_to_end(&mut seen);
        assert!(
            seen.is_empty(),
            "foreign bytes reached the backend: {seen:?}"
        );
    }
}

#[test]
fn a_connection_taken_back_is_counted_once_in_the_status() {
    let backend = Backend::tcp(echo);
    let args = ["--fd-store", "127.0.0.1:0", &backend.connect_arg];
    let mut manager = manager();
    manager.size = Some("2".into());
    let mut relay = manager.start(&args);
    let mut client = exchanged(&relay);
    relay.signal(Signal::USR2);
    relay.wait_for_line("not stored");
    // STATUS= follows the counts within a second of a change; give it two.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    manager.settle();
    let statuses = manager.lines("STATUS=");
    assert!(
        !statuses.iter().any(|s| s.contains("2 total")),
        "{statuses:?}"
    );
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    let _ = exits_for_a_restart(relay);
}

/// A TCP client of `relay` whose one-byte exchange went through: it is
/// being relayed.
fn exchanged(relay: &Relay) -> TcpStream {
    let mut client = TcpStream::connect(relay.address()).unwrap();
    client.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte).unwrap();
    client
}

/// Waits for `relay` to exit asking to be restarted (status 3); its log.
fn exits_for_a_restart(mut relay: Relay) -> String {
    let (status, log) = relay.finish();
    assert_eq!(status.code(), Some(3), "{log}");
    log
}

/// A relay started with `args`, one TCP connection through it to
/// `backends` that has carried `sent` upwards, and a hand-over: the
/// connection sits in the store. Its client and backend.
fn stored_connection(
    manager: &mut Manager,
    args: &[&str],
    backends: &TcpListener,
    sent: &[u8],
) -> (TcpStream, TcpStream) {
    let first = manager.start(args);
    let mut client = TcpStream::connect(first.address()).unwrap();
    let (mut backend, _) = backends.accept().unwrap();
    client.write_all(sent).unwrap();
    let mut got = vec![0u8; sent.len()];
    backend.read_exact(&mut got).unwrap();
    let _ = hand_over(manager, first);
    (client, backend)
}

/// Both peers of a relayed connection see an abort, never a clean end.
fn both_see_a_reset(client: &mut TcpStream, backend: &mut TcpStream) {
    let mut byte = [0u8; 1];
    for (side, conn) in [("client", client), ("backend", backend)] {
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let error = conn
            .read(&mut byte)
            .expect_err(&format!("the {side} sees an abort, not a clean end"));
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{side}: {error}"
        );
    }
}

/// A backend the test holds itself: the relay's connection to it is `accept`ed
/// here, so the test decides when it reads and writes.
fn held_backend() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

/// Writes `data` from a thread, counting what the kernel took.
fn writer(
    mut conn: Box<dyn Conn>,
    data: Arc<Vec<u8>>,
) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let thread = std::thread::spawn(move || {
        for chunk in data.chunks(64 << 10) {
            conn.write_all(chunk).unwrap();
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
    });
    (thread, written)
}

/// Waits until a writer whose peer does not read has stopped making
/// progress: every buffer on the way, the relay's pipe included, is full.
fn until_stalled(written: &AtomicU64) {
    let deadline = Instant::now() + DEADLINE;
    let mut last = u64::MAX;
    while Instant::now() < deadline {
        let now = written.load(Ordering::SeqCst);
        if now == last && now > 0 {
            return;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the writer never stalled");
}

#[test]
fn a_hand_over_moves_open_connections_with_their_bytes_in_flight_to_the_next_instance() {
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let (backends, backend_address) = held_backend();
    let args = ["--fd-store", "-v", &socket, &backend_address];
    let mut manager = manager_saying_its_size();
    let first = manager.start(&args);

    let client: Box<dyn Conn> = connect(&socket);
    let (backend, _) = backends.accept().unwrap();
    let backend: Box<dyn Conn> = Box::new(backend);
    // 16 MiB each way, with nobody reading: the relay holds what it read
    // but could not write when the hand-over comes.
    let up = Arc::new(payload(16 << 20, 1));
    let down = Arc::new(payload(16 << 20, 2));
    let (up_writer, up_written) = writer(client.try_clone_box(), up.clone());
    let (down_writer, down_written) = writer(backend.try_clone_box(), down.clone());
    until_stalled(&up_written);
    until_stalled(&down_written);

    let log = hand_over(&mut manager, first);
    assert!(
        log.contains("handed 1 connection to systemd's file descriptor store"),
        "{log}"
    );
    let names = manager.names();
    assert!(names.iter().any(|n| n == "listener"), "{names:?}");
    let client_name = names
        .iter()
        .find(|n| n.contains(".client,"))
        .expect("the client socket stored");
    assert!(client_name.contains("ended=-"), "{client_name}");
    for role in ["backend", "up.read", "up.write", "down.read", "down.write"] {
        assert!(
            names.iter().any(|n| n.ends_with(&format!(".{role}"))),
            "{role} stored (bytes in flight): {names:?}"
        );
    }

    let second = manager.start(&args);
    assert!(
        second
            .log()
            .contains("took over 1 connection from the previous instance"),
        "{}",
        second.log()
    );
    assert_eq!(
        manager.names(),
        ["listener"],
        "the adopted connection left the store"
    );

    let (mut client, mut backend) = (client, backend);
    let backend_reader = std::thread::spawn(move || {
        let got = read_exactly(&mut *backend, 16 << 20);
        (backend, got)
    });
    let got_down = read_exactly(&mut *client, 16 << 20);
    let (mut backend, got_up) = backend_reader.join().unwrap();
    up_writer.join().unwrap();
    down_writer.join().unwrap();
    assert!(
        got_up == *up,
        "client -> backend: every byte, once, in order"
    );
    assert!(
        got_down == *down,
        "backend -> client: every byte, once, in order"
    );

    // Half-close still travels, and the connection ends normally.
    client.shutdown_write();
    let (rest, closed) = read_until_closed(&mut *backend);
    assert!(rest.is_empty() && closed, "EOF towards the backend");
    backend.write_all(b"last words").unwrap();
    backend.shutdown_write();
    assert_eq!(read_to_end(&mut *client), b"last words");
    let mut second = second;
    let line = second.wait_for_line("bytes up");
    assert!(
        line.contains(&format!(
            "{} bytes up, {} bytes down",
            16 << 20,
            (16 << 20) + 10
        )),
        "-v counts the whole connection, before and after the hand-over: {line}"
    );
}

#[test]
fn a_half_closed_connection_stays_half_closed_and_the_proxy_header_is_not_sent_twice() {
    let (backends, backend_address) = held_backend();
    let args = [
        "--fd-store",
        "--proxy-protocol",
        "v1",
        "127.0.0.1:0",
        &backend_address,
    ];
    let mut manager = manager_saying_its_size();
    let first = manager.start(&args);
    let address = first.address().to_string();

    let mut client = TcpStream::connect(&address).unwrap();
    let (mut backend, _) = backends.accept().unwrap();
    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut seen = Vec::new();
    backend.set_read_timeout(Some(DEADLINE)).unwrap();
    backend.read_to_end(&mut seen).unwrap();
    let seen = String::from_utf8(seen).unwrap();
    assert!(
        seen.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ") && seen.ends_with("\r\nhello"),
        "{seen:?}"
    );

    let _ = hand_over(&mut manager, first);
    let client_name = manager
        .names()
        .into_iter()
        .find(|n| n.contains(".client,"))
        .unwrap()
        .to_string();
    assert!(client_name.contains("ended=up"), "{client_name}");
    let second = manager.start(&args);
    assert!(
        second.log().contains("took over 1 connection"),
        "{}",
        second.log()
    );

    // The backend can still answer; nothing more comes its way (no header).
    backend.write_all(b"answer").unwrap();
    backend.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"answer");
    drop(second);
}

#[test]
fn a_stored_connection_nobody_takes_over_ends_as_a_reset() {
    let (backends, backend_address) = held_backend();
    let args = ["--fd-store", "127.0.0.1:0", &backend_address];
    let mut manager = manager_saying_its_size();
    let (mut client, mut backend) =
        stored_connection(&mut manager, &args, &backends, b"unfinished");
    // `systemctl stop`: systemd closes what it stored.
    manager.clear();
    both_see_a_reset(&mut client, &mut backend);
}

#[test]
fn without_a_store_a_hand_over_request_drains_and_exits_for_a_restart() {
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&[&socket, &backend.connect_arg]);
    let mut client = connect(&socket);
    client.write_all(b"ping").unwrap();
    assert_eq!(read_exactly(&mut *client, 4), b"ping");
    relay.signal(Signal::USR2);
    relay.wait_for_line("no file descriptor store");
    assert!(relay.running(), "draining, not killed");
    client.write_all(b"still").unwrap();
    assert_eq!(read_exactly(&mut *client, 5), b"still");
    client.shutdown_write();
    assert!(read_to_end(&mut *client).is_empty());
    let _ = exits_for_a_restart(relay);
    assert!(
        !std::path::Path::new(&socket).exists(),
        "the socket file went"
    );
}

#[test]
fn a_store_too_small_for_the_connections_means_a_drain_said_in_one_line() {
    let backend = Backend::tcp(echo);
    let args = ["--fd-store", "127.0.0.1:0", &backend.connect_arg];
    let mut manager = manager();
    // The listener and one connection need 3 descriptors, and one more
    // checks the store.
    manager.size = Some("3".into());
    let mut relay = manager.start(&args);
    let mut client = exchanged(&relay);
    relay.signal(Signal::USR2);
    let line = relay.wait_for_line("not stored");
    assert!(
        line.contains(
            "need 3 descriptors in the store and one to check it, and $FDSTORE says it holds 3"
        ),
        "{line}"
    );
    client.write_all(b"y").unwrap();
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"y", "still relayed while draining");
    client.shutdown(Shutdown::Write).unwrap();
    let _ = exits_for_a_restart(relay);
    manager.settle();
    assert_eq!(manager.names(), ["listener"], "no connection stored");
}

/// Reads everything the stalled upload sends, checks it, and ends the
/// connection cleanly; the relay's log once it has exited for a restart.
fn finish_stalled_upload(stalled: Stalled) -> String {
    let Stalled {
        relay,
        client,
        mut backend,
        data,
        writer,
    } = stalled;
    let got = read_exactly(&mut *backend, data.len());
    writer.join().unwrap();
    assert!(got == *data, "every byte, once, in order");
    let mut client = client;
    client.shutdown_write();
    let (rest, closed) = read_until_closed(&mut *backend);
    assert!(rest.is_empty() && closed, "a clean end towards the backend");
    backend.shutdown_write();
    assert!(
        read_to_end(&mut *client).is_empty(),
        "a clean end towards the client"
    );
    exits_for_a_restart(relay)
}

#[test]
fn a_connection_the_store_cannot_take_goes_on_even_with_its_write_side_blocked() {
    let (backends, backend_address) = held_backend();
    let args = ["--fd-store", "127.0.0.1:0", &backend_address];
    let mut manager = manager();
    manager.size = Some("2".into());
    let mut stalled = stalled_upload(&mut manager, &args, &backends);
    // The backend reads nothing: the relay's writes towards it are blocked
    // when the connection is taken off the engine, and given back.
    stalled.relay.signal(Signal::USR2);
    let line = stalled.relay.wait_for_line("not stored");
    assert!(line.contains("they go on here"), "{line}");
    let log = finish_stalled_upload(stalled);
    assert!(!log.contains("cutting"), "{log}");
}

#[test]
fn a_store_smaller_than_it_says_is_found_out_and_nothing_is_lost() {
    let (backends, backend_address) = held_backend();
    let args = ["--fd-store", "127.0.0.1:0", &backend_address];
    // FileDescriptorStoreMax= lowered to 3 in a drop-in, while $FDSTORE (set
    // by the unit) still says 100: the listener and the connection's two
    // sockets fit, its pipe and the check do not.
    let mut manager = Manager::with_max(3);
    manager.size = Some("100".into());
    let mut stalled = stalled_upload(&mut manager, &args, &backends);
    stalled.relay.signal(Signal::USR2);
    let line = stalled.relay.wait_for_line("not stored");
    assert!(line.contains("systemd did not keep them all"), "{line}");
    let _ = finish_stalled_upload(stalled);
    manager.settle();
    assert_eq!(
        manager.names(),
        ["listener"],
        "what reached the store was removed from it: {:?}",
        manager.refused()
    );
}

/// One connection with 8 MiB on its way up that the backend does not read
/// yet: the relay holds bytes in its pipe when the hand-over comes.
struct Stalled {
    relay: Relay,
    client: Box<dyn Conn>,
    backend: Box<dyn Conn>,
    data: Arc<Vec<u8>>,
    writer: std::thread::JoinHandle<()>,
}

fn stalled_upload(manager: &mut Manager, args: &[&str], backends: &TcpListener) -> Stalled {
    let relay = manager.start(args);
    let client = connect(relay.address());
    let (backend, _) = backends.accept().unwrap();
    let data = Arc::new(payload(8 << 20, 3));
    let (writer, written) = writer(client.try_clone_box(), data.clone());
    until_stalled(&written);
    Stalled {
        relay,
        client,
        backend: Box::new(backend),
        data,
        writer,
    }
}

#[test]
fn an_instance_that_fails_after_adopting_leaves_the_connections_intact_for_the_next() {
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    let (backends, backend_address) = held_backend();
    let args = ["--fd-store", &socket, &backend_address];
    let mut manager = manager_saying_its_size();
    let Stalled {
        relay: first,
        client,
        mut backend,
        data,
        writer,
    } = stalled_upload(&mut manager, &args, &backends);
    let _ = hand_over(&mut manager, first);
    let stored = manager.names().join(" ");
    assert!(
        stored.contains(".up.read"),
        "bytes in flight stored: {stored}"
    );

    // The next instance adopts, then fails to start (too few descriptors
    // to install its signal handlers): it must have changed nothing.
    let mut failing = manager.command(&args);
    limit_open_files(&mut failing, 12);
    let (status, log) = Relay::start_command(failing, 0).finish();
    assert_eq!(status.code(), Some(1), "{log}");
    assert_eq!(manager.names().join(" "), stored, "still all in the store");

    let third = manager.start(&args);
    assert!(
        third.log().contains("took over 1 connection"),
        "{}",
        third.log()
    );
    let got = read_exactly(&mut *backend, data.len());
    writer.join().unwrap();
    assert!(
        got == *data,
        "every byte, once, in order, after a failed start in between"
    );
    drop(client);
}

#[test]
fn a_store_that_refuses_mid_way_means_a_drain_not_a_cut() {
    let backend = Backend::tcp(echo);
    let dir = TempDir::new();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
    let mut command = command(&["--fd-store", "127.0.0.1:0", &backend.connect_arg]);
    command
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .env("FDSTORE", "100");
    let mut relay = Relay::start_command(command, 1);
    let mut clients: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(relay.address()).unwrap())
        .collect();
    for client in &mut clients {
        client.write_all(b"one").unwrap();
        let mut reply = [0u8; 3];
        client.read_exact(&mut reply).unwrap();
    }
    // systemd goes away: every store message is refused.
    drop(notify);
    relay.signal(Signal::USR2);
    let line = relay.wait_for_line("not stored");
    assert!(line.contains("2 connections not stored (systemd"), "{line}");
    for client in &mut clients {
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client.write_all(b"two").unwrap();
        let mut reply = [0u8; 3];
        client
            .read_exact(&mut reply)
            .expect("still relayed, not cut");
        assert_eq!(&reply, b"two");
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .expect("a clean end, not a reset");
    }
    let log = exits_for_a_restart(relay);
    assert!(
        log.contains("waiting up to 30s for 2 open connections"),
        "{log}"
    );
}

#[test]
fn without_the_store_size_connections_are_handed_over_and_checked() {
    let backend = Backend::tcp(echo);
    let args = ["--fd-store", "127.0.0.1:0", &backend.connect_arg];
    // systemd 252 does not say how large the store is ($FDSTORE).
    let mut manager = manager();
    let relay = manager.start(&args);
    let mut client = exchanged(&relay);
    let log = hand_over(&mut manager, relay);
    assert!(log.contains("handed 1 connection"), "{log}");
    let next = manager.start(&args);
    assert!(
        next.log().contains("took over 1 connection"),
        "{}",
        next.log()
    );
    client.write_all(b"z").unwrap();
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"z");
    manager.settle();
    assert_eq!(
        manager.names(),
        ["listener"],
        "the check left the store too"
    );
}

#[test]
fn a_client_still_connecting_when_the_hand_over_goes_on_is_cut_with_a_reset() {
    let dir = TempDir::new();
    let missing = dir.arg("not-yet.sock");
    // With a finite --connect-timeout, a client gives up connecting before
    // the hand-over stops waiting for it (its wait began earlier); without
    // one, the hand-over waits 10 s.
    let args = [
        "--fd-store",
        "--connect-retry",
        "--connect-timeout",
        "0",
        "127.0.0.1:0",
        &missing,
    ];
    let mut manager = manager_saying_its_size();
    let relay = manager.start(&args);
    let mut client = TcpStream::connect(relay.address()).unwrap();
    client.write_all(b"waiting").unwrap();
    let log = hand_over(&mut manager, relay);
    assert!(log.contains("1 client still connecting"), "{log}");
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    let error = client.read(&mut byte).expect_err("a cut, not a clean end");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}
