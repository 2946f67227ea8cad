//! Limits, timeouts, signals and logging: `--connections-max` queueing,
//! accept errors, `--connect-timeout`, `--idle-timeout`, `--exit-idle-time`,
//! graceful and hurried shutdown, and what each log level prints.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use common::*;

const MIB: usize = 1 << 20;

/// A CONNECT that refuses connections: a stale socket file in `dir`
/// (unlike a freed TCP port, nobody else can start listening there).
fn refusing_address(dir: &TempDir) -> String {
    let path = dir.arg("refusing.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    path
}

/// Asserts that `elapsed` is at least `span` (less a little for clock
/// granularity) and well below `span` plus a generous margin.
fn assert_about(elapsed: Duration, span: Duration, what: &str) {
    assert!(
        elapsed + Duration::from_millis(10) >= span,
        "{what}: after {elapsed:?}, sooner than {span:?}"
    );
    assert!(
        elapsed < span + Duration::from_millis(2500),
        "{what}: after {elapsed:?}, much later than {span:?}"
    );
}

// --- --connections-max -----------------------------------------------------

#[test]
fn at_the_connection_limit_clients_wait_and_are_served_later() {
    let dir = TempDir::new();
    for listen in ["127.0.0.1:0".to_string(), dir.arg("relay.sock")] {
        let backend = Backend::tcp(echo);
        let relay = Relay::start(&["-c", "2", &listen, &backend.connect_arg]);
        let mut first = connect(relay.address());
        first.write_all(b"one").unwrap();
        assert_eq!(read_exactly(&mut *first, 3), b"one");
        let mut second = connect(relay.address());
        second.write_all(b"two").unwrap();
        assert_eq!(read_exactly(&mut *second, 3), b"two");
        // The third client is let in by the kernel, not served by the relay.
        let mut third = try_connect(relay.address()).expect("the third client is not refused");
        third.write_all(b"three").unwrap();
        assert_silent(
            &mut *third,
            Duration::from_millis(300),
            "third client at -c 2",
        );
        assert_eq!(
            backend.connections(),
            2,
            "{listen}: the backend sees only two connections"
        );
        // One ends: the third gets its turn, fully.
        drop(first);
        assert_eq!(read_exactly(&mut *third, 5), b"three");
        third.shutdown_write();
        assert_eq!(read_to_end(&mut *third), b"");
        assert_eq!(backend.connections(), 3);
        second.write_all(b"still").unwrap();
        assert_eq!(read_exactly(&mut *second, 5), b"still");
    }
}

#[test]
fn many_more_clients_than_the_limit_all_succeed() {
    const CLIENTS: usize = 40;
    let active = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (backend_active, backend_most) = (active.clone(), most.clone());
    let backend = Backend::tcp(move |mut conn: Box<dyn Conn>| {
        let now = backend_active.fetch_add(1, Ordering::SeqCst) + 1;
        backend_most.fetch_max(now, Ordering::SeqCst);
        let got = Digest::of_stream(&mut *conn);
        thread::sleep(Duration::from_millis(20)); // some work
        // Counted down before the reply, so never more than the relay holds.
        backend_active.fetch_sub(1, Ordering::SeqCst);
        let _ = conn.write_all(got.line().as_bytes());
    });
    let relay = Relay::start(&["-c", "4", "127.0.0.1:0", &backend.connect_arg]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let address = relay.address().to_string();
            thread::spawn(move || {
                let data = payload(10_000 + i, 200 + i as u64);
                let reply = exchange(connect(&address), data.clone());
                assert_eq!(
                    String::from_utf8(reply).unwrap(),
                    digest_of(&data),
                    "client {i}"
                );
            })
        })
        .collect();
    for client in clients {
        client.join().expect("every client is served");
    }
    assert_eq!(backend.connections(), CLIENTS);
    let most = most.load(Ordering::SeqCst);
    eprintln!("at most {most} connections at the backend at once");
    assert!(most <= 4, "never more than -c 4 at once, saw {most}");
}

// --- accept errors ---------------------------------------------------------

/// What became of a client that sent `ping` to a relay short of descriptors.
enum Fate {
    /// The echo came back.
    Relayed,
    /// Waiting in the backlog while the relay's accept fails.
    Queued,
    /// Accepted, then closed (the relay had no descriptor left for CONNECT).
    Closed,
}

/// Sends `ping` and finds out what becomes of the client.
fn ping(relay: &Relay, client: &mut dyn Conn) -> Fate {
    client.write_all(b"ping").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(10)));
    let fate = wait_for_fate(relay, client);
    client.set_read_timeout(Some(DEADLINE));
    fate
}

/// Polls the client (its reads time out quickly) and the relay's log.
fn wait_for_fate(relay: &Relay, client: &mut dyn Conn) -> Fate {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buffer = [0u8; 4];
    loop {
        assert!(
            Instant::now() < deadline,
            "no reply, no accept error, no close; log:\n{}",
            relay.log()
        );
        match client.read(&mut buffer) {
            Ok(0) => return Fate::Closed,
            Ok(n) => {
                got.extend_from_slice(&buffer[..n]);
                if got == b"ping" {
                    return Fate::Relayed;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if out_of_descriptors(relay) > 0 {
                    return Fate::Queued;
                }
            }
            Err(_) => return Fate::Closed,
        }
    }
}

/// Lines saying the relay is out of descriptors at accept.
fn out_of_descriptors(relay: &Relay) -> usize {
    relay.count_lines("accept failed") + relay.count_lines("accepting paused")
}

/// Runs a relay with `limit` descriptors and opens clients until its accept
/// fails; returns false if instead a client got closed (the last descriptor
/// went to an accepted client, none was left for CONNECT: another limit
/// will do).
fn exhaust_descriptors(limit: u64, backend: &Backend) -> bool {
    let mut cmd = command(&["127.0.0.1:0", &backend.connect_arg]);
    limit_open_files(&mut cmd, limit);
    let mut relay = Relay::start_command(cmd, 1);
    let mut relayed = Vec::new();
    let mut queued = loop {
        assert!(
            relayed.len() < limit as usize,
            "more connections than descriptors?"
        );
        let mut client = connect(relay.address());
        match ping(&relay, &mut *client) {
            Fate::Relayed => relayed.push(client),
            Fate::Queued => break client,
            Fate::Closed => {
                eprintln!(
                    "with {limit} descriptors a client was closed instead; trying another limit"
                );
                return false;
            }
        }
    };
    // Either accept itself failed, or the relay had no descriptor to
    // reserve for another client's CONNECT socket and paused accepting.
    let line = relay
        .log()
        .lines()
        .find(|l| l.contains("accept failed") || l.contains("accepting paused"))
        .expect("a line saying why clients wait")
        .to_string();
    assert!(line.contains("open files"), "the error is named: {line}");
    eprintln!("accept failed with {} connections relayed", relayed.len());
    // More clients wait too; the relay keeps retrying meanwhile.
    let mut more: Vec<_> = (0..3).map(|_| connect(relay.address())).collect();
    for client in &mut more {
        client.write_all(b"ping").unwrap();
    }
    thread::sleep(Duration::from_millis(1500));
    assert!(relay.running(), "accept errors never stop the relay");
    let lines = out_of_descriptors(&relay);
    assert!(
        lines <= 2,
        "logged not once per failed call (retries every short pause for 1.5 s): {lines} lines"
    );
    // Freeing descriptors lets every waiting client in.
    drop(relayed);
    assert_eq!(read_exactly(&mut *queued, 4), b"ping");
    for client in &mut more {
        assert_eq!(read_exactly(&mut **client, 4), b"ping");
    }
    drop(queued);
    drop(more);
    assert_eq!(
        exchange(connect(relay.address()), b"fresh client".to_vec()),
        b"fresh client"
    );
    assert!(relay.running());
    true
}

#[test]
fn accept_errors_are_logged_sparingly_and_the_relay_recovers() {
    let backend = Backend::tcp(echo);
    // Consecutive limits: one of them leaves the relay with no descriptor
    // at accept rather than one too few for CONNECT.
    for limit in 32..40 {
        if exhaust_descriptors(limit, &backend) {
            return;
        }
    }
    panic!("the relay's accept never failed for lack of descriptors");
}

// --- --connect-timeout -----------------------------------------------------

/// A Unix listener with backlog 0 and its queue filled: a connect to it
/// never completes.
fn unix_black_hole(dir: &TempDir) -> (Socket, UnixStream, String) {
    let path = dir.join("full.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    let queued = UnixStream::connect(&path).unwrap();
    let probe = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None).unwrap();
    let error = probe
        .connect(&SockAddr::unix(&path).unwrap())
        .expect_err("the queue is full");
    assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock, "{error}");
    (listener, queued, path.to_str().unwrap().to_string())
}

/// The same over TCP: SYNs to a full accept queue are dropped.
fn tcp_black_hole(address: &str) -> (Socket, TcpStream, String) {
    let address: std::net::SocketAddr = address.parse().unwrap();
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&address.into()).unwrap();
    listener.listen(0).unwrap();
    let address = listener.local_addr().unwrap().as_socket().unwrap();
    let queued = TcpStream::connect(address).unwrap();
    (listener, queued, address.to_string())
}

#[test]
fn connect_timeout_gives_up_on_a_backend_that_never_answers() {
    let dir = TempDir::new();
    let (_unix, _unix_queued, unix_target) = unix_black_hole(&dir);
    let (_tcp, _tcp_queued, tcp_target) = tcp_black_hole("127.0.0.1:0");
    for (target, span, duration) in [
        (unix_target, "500ms", Duration::from_millis(500)),
        (tcp_target, "1s", Duration::from_secs(1)),
    ] {
        let mut relay = Relay::start(&["--connect-timeout", span, "127.0.0.1:0", &target]);
        let started = Instant::now();
        let (bytes, _) = read_until_closed(&mut *connect(relay.address()));
        assert!(bytes.is_empty(), "{bytes:?}");
        assert_about(
            started.elapsed(),
            duration,
            &format!("closing the client when {target} never answers"),
        );
        let warning = relay.wait_for_line("cannot connect");
        assert!(warning.contains(&target), "{warning}");
        let lower = warning.to_lowercase();
        assert!(
            ["timed out", "timeout", "within"]
                .iter()
                .any(|w| lower.contains(w)),
            "the warning names the reason: {warning}"
        );
        assert!(relay.running());
    }
}

#[test]
fn connect_timeout_covers_all_addresses_of_a_name_together() {
    let dir = TempDir::new();
    let (_first, _first_queued, first) = tcp_black_hole("127.0.0.1:0");
    let port = port_of(&first);
    if let Err(e) = TcpListener::bind(("127.0.0.2", port)) {
        skip(&format!("cannot listen on 127.0.0.2:{port}: {e}"));
        return;
    }
    let (_second, _second_queued, _) = tcp_black_hole(&format!("127.0.0.2:{port}"));
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 slow.test\n127.0.0.2 slow.test\n").unwrap();
    let mut cmd = command(&[
        "--connect-timeout",
        "500ms",
        "127.0.0.1:0",
        &format!("slow.test:{port}"),
    ]);
    if !private_hosts(&mut cmd, &hosts) {
        skip("no private /etc/hosts (needs root and mount namespaces)");
        return;
    }
    let mut relay = Relay::start_command(cmd, 1);
    let started = Instant::now();
    let (bytes, _) = read_until_closed(&mut *connect(relay.address()));
    let elapsed = started.elapsed();
    assert!(bytes.is_empty());
    assert!(
        elapsed + Duration::from_millis(10) >= Duration::from_millis(500),
        "gave up after {elapsed:?}"
    );
    // 500 ms per address would make it a second.
    assert!(
        elapsed < Duration::from_millis(900),
        "500ms for both addresses together, not each: {elapsed:?}"
    );
    let warning = relay.wait_for_line("cannot connect");
    assert!(warning.contains("slow.test"), "{warning}");
}

// --- --idle-timeout --------------------------------------------------------

/// A backend for the idle tests: after a first byte `e` it echoes; after
/// `o` it only reads, and answers how many bytes it got once the client is
/// done.
fn echo_or_count(mut conn: Box<dyn Conn>) {
    let mut mode = [0u8; 1];
    if conn.read_exact(&mut mode).is_err() {
        return;
    }
    if &mode == b"e" {
        echo(conn);
    } else {
        let got = Digest::of_stream(&mut *conn);
        let _ = conn.write_all(format!("{}\n", got.len).as_bytes());
    }
}

#[test]
fn idle_timeout_closes_silent_connections_but_not_active_ones() {
    let backend = Backend::tcp(echo_or_count);
    let mut relay = Relay::start(&[
        "-v",
        "--idle-timeout",
        "300ms",
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    let started = Instant::now();
    let mut silent = connect(relay.address());
    // Small pieces every 100 ms for 1.2 s (four idle timeouts' worth), both
    // ways on one connection, one way only on the other.
    let mut both_ways = connect(relay.address());
    let echoing = thread::spawn(move || {
        both_ways.write_all(b"e").unwrap();
        for i in 0..12u8 {
            both_ways.write_all(&[i]).unwrap();
            assert_eq!(read_exactly(&mut *both_ways, 1), [i], "round trip {i}");
            thread::sleep(Duration::from_millis(100));
        }
        both_ways.shutdown_write();
        assert_eq!(read_to_end(&mut *both_ways), b"");
    });
    let mut one_way = connect(relay.address());
    let sending = thread::spawn(move || {
        one_way.write_all(b"o").unwrap();
        for i in 0..12u8 {
            one_way.write_all(&[i]).unwrap();
            thread::sleep(Duration::from_millis(100));
        }
        one_way.shutdown_write();
        assert_eq!(
            read_to_end(&mut *one_way),
            b"12\n",
            "the backend got every byte"
        );
    });
    let (bytes, eof) = read_until_closed(&mut *silent);
    assert!(
        bytes.is_empty() && eof,
        "the silent connection ends cleanly: {bytes:?}, eof {eof}"
    );
    assert_about(
        started.elapsed(),
        Duration::from_millis(300),
        "idle timeout",
    );
    relay.wait_for_line("idle for");
    echoing
        .join()
        .expect("the connection active both ways stays open");
    sending
        .join()
        .expect("the connection active one way stays open");
    assert_eq!(relay.count_lines("idle for"), 1, "{}", relay.log());
}

// --- --exit-idle-time ------------------------------------------------------

#[test]
fn exit_idle_time_exits_0_even_if_no_connection_ever_came() {
    let dir = TempDir::new();
    let path = dir.arg("relay.sock");
    let started = Instant::now();
    let mut relay = Relay::start(&["--exit-idle-time", "300ms", &path, "127.0.0.1:9"]);
    let status = relay.wait_exit();
    assert!(status.success(), "{status:?}");
    assert_about(
        started.elapsed(),
        Duration::from_millis(300),
        "exit when idle",
    );
    assert!(
        dir.entries().is_empty(),
        "the socket file is removed: {:?}",
        dir.entries()
    );
}

#[test]
fn exit_idle_time_waits_while_a_connection_is_open() {
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&[
        "--exit-idle-time",
        "300ms",
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    let mut conn = connect(relay.address());
    conn.write_all(b"x").unwrap();
    assert_eq!(read_exactly(&mut *conn, 1), b"x");
    assert!(
        relay.wait_exit_within(Duration::from_secs(1)).is_none(),
        "no exit with a connection open"
    );
    conn.write_all(b"y").unwrap();
    assert_eq!(read_exactly(&mut *conn, 1), b"y");
    drop(conn);
    let closed = Instant::now();
    let status = relay.wait_exit();
    assert!(status.success(), "{status:?}");
    assert_about(
        closed.elapsed(),
        Duration::from_millis(300),
        "exit once the last connection ended",
    );
}

// --- signals ---------------------------------------------------------------

#[test]
fn the_listening_line_comes_once_signals_stop_the_relay_gracefully() {
    let backend = Backend::tcp(echo);
    for signal in [Signal::TERM, Signal::INT, Signal::TERM, Signal::INT] {
        let mut relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
        relay.signal(signal);
        let status = relay.wait_exit();
        assert_eq!(
            status.signal(),
            None,
            "signal {signal:?} must not kill the relay outright"
        );
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn shutdown_timeout_bounds_connections_that_never_end() {
    let backend = Backend::tcp(hold);
    let mut relay = Relay::start(&[
        "--shutdown-timeout",
        "500ms",
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    let mut conn = connect(relay.address());
    conn.write_all(b"x").unwrap();
    backend.wait_connections(1);
    let signalled = Instant::now();
    relay.signal(Signal::TERM);
    let status = relay.wait_exit();
    assert!(status.success(), "{status:?}");
    assert_about(
        signalled.elapsed(),
        Duration::from_millis(500),
        "exit after the shutdown timeout",
    );
    let (bytes, _) = read_until_closed(&mut *conn);
    assert!(bytes.is_empty());
}

#[test]
fn shutdown_timeout_infinity_waits_for_every_connection() {
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&[
        "--shutdown-timeout",
        "infinity",
        "127.0.0.1:0",
        &backend.connect_arg,
    ]);
    let mut conn = connect(relay.address());
    conn.write_all(b"x").unwrap();
    assert_eq!(read_exactly(&mut *conn, 1), b"x");
    relay.signal(Signal::TERM);
    relay.wait_for_line("stopping");
    assert!(
        relay.wait_exit_within(Duration::from_secs(1)).is_none(),
        "still waiting for the connection"
    );
    conn.write_all(b"y").unwrap();
    assert_eq!(read_exactly(&mut *conn, 1), b"y");
    conn.shutdown_write();
    assert_eq!(read_to_end(&mut *conn), b"");
    let status = relay.wait_exit();
    assert!(status.success(), "{status:?}");
}

/// A digest backend that also counts the bytes it has read so far.
fn counting_digest(count: Arc<AtomicU64>) -> impl Fn(Box<dyn Conn>) + Send + Sync {
    move |mut conn: Box<dyn Conn>| {
        let mut digest = Digest::new();
        let mut buffer = vec![0u8; 65536];
        loop {
            match conn.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    digest = digest.update(&buffer[..n]);
                    count.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
        let _ = conn.write_all(digest.line().as_bytes());
    }
}

#[test]
fn a_stop_signal_closes_the_listener_at_once_and_lets_transfers_finish() {
    let dir = TempDir::new();
    for signal in [Signal::TERM, Signal::INT] {
        for listen in [dir.arg("relay.sock"), "127.0.0.1:0".to_string()] {
            let received = Arc::new(AtomicU64::new(0));
            let backend = Backend::tcp(counting_digest(received.clone()));
            let mut relay = Relay::start(&[&listen, &backend.connect_arg]);
            let address = relay.address().to_string();
            let mut conn = connect(&address);
            let data = payload(8 * MIB, 9);
            conn.write_all(&data[..MIB]).unwrap();
            wait_until("bytes at the backend", || {
                received.load(Ordering::SeqCst) > 0
            });
            let signalled = Instant::now();
            relay.signal(signal);
            // New connections are refused at once (a probe that still got
            // in before the relay saw the signal is served like any other)...
            let mut probes_in = 0;
            wait_until("the listener to close", || match try_connect(&address) {
                Ok(_) => {
                    probes_in += 1;
                    false
                }
                Err(_) => true,
            });
            let refused_after = signalled.elapsed();
            assert!(
                refused_after < Duration::from_secs(1),
                "refused only after {refused_after:?}"
            );
            if listen.contains('/') {
                assert!(
                    !dir.join("relay.sock").exists(),
                    "the socket file is gone at once"
                );
            }
            // ...while the transfer in flight goes on to the last byte.
            assert!(
                relay.running(),
                "signal {signal:?}: the relay waits for the open connection"
            );
            conn.write_all(&data[MIB..]).unwrap();
            conn.shutdown_write();
            assert_eq!(
                read_to_end(&mut *conn),
                digest_of(&data).into_bytes(),
                "signal {signal:?} on {listen}"
            );
            let status = relay.wait_exit();
            assert!(status.success(), "{status:?}");
            assert!(try_connect(&address).is_err());
            assert!(
                backend.connections() <= 1 + probes_in,
                "no connection accepted after the listener closed"
            );
        }
    }
}

#[test]
fn a_second_signal_exits_at_once() {
    for (first, second) in [
        (Signal::TERM, Signal::TERM),
        (Signal::INT, Signal::INT),
        (Signal::TERM, Signal::INT),
    ] {
        let backend = Backend::tcp(hold);
        let mut relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
        let mut conn = connect(relay.address());
        conn.write_all(b"x").unwrap();
        backend.wait_connections(1);
        relay.signal(first);
        relay.wait_for_line("stopping");
        assert!(
            relay.wait_exit_within(Duration::from_millis(300)).is_none(),
            "the first signal waits (30s default)"
        );
        let signalled = Instant::now();
        relay.signal(second);
        let status = relay.wait_exit();
        let took = signalled.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "exit within a second of the second signal, took {took:?}"
        );
        assert!(status.success(), "{status:?}");
    }
}

// --- logging ---------------------------------------------------------------

/// Whether `line` gives a duration such as `0.010s` or `12ms`.
fn has_duration(line: &str) -> bool {
    line.split_whitespace().any(|word| {
        let word = word.trim_end_matches([':', ',', ';', ')']);
        let number = word.strip_suffix("ms").or_else(|| word.strip_suffix('s'));
        number.is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
    })
}

#[test]
fn quiet_prints_only_the_listening_line() {
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&["-q", "127.0.0.1:0", &backend.connect_arg]);
    assert_eq!(
        exchange(connect(relay.address()), b"quiet".to_vec()),
        b"quiet"
    );
    let dir = TempDir::new();
    let mut failing = Relay::start(&["-q", "127.0.0.1:0", &refusing_address(&dir)]);
    let (bytes, _) = read_until_closed(&mut *connect(failing.address()));
    assert!(bytes.is_empty());
    for relay in [&mut relay, &mut failing] {
        relay.signal(Signal::TERM);
        let (status, log) = relay.finish();
        assert!(status.success());
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "only the listening line with -q:\n{log}");
        assert!(lines[0].contains("listening on"));
    }
    // Errors are still printed.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let (status, stderr) = run_to_exit(&[
        "-q",
        &taken.local_addr().unwrap().to_string(),
        "127.0.0.1:9",
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn by_default_warnings_and_shutdown_are_logged_but_no_line_per_connection() {
    let backend = Backend::tcp(echo);
    let mut relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    let stream = TcpStream::connect(relay.address()).unwrap();
    let peer = stream.local_addr().unwrap().to_string();
    assert_eq!(exchange(Box::new(stream), b"default".to_vec()), b"default");
    relay.signal(Signal::TERM);
    relay.wait_for_line("stopping");
    let (status, log) = relay.finish();
    assert!(status.success());
    assert!(
        !log.contains(&peer),
        "no line about the connection from {peer}:\n{log}"
    );
    assert!(!log.contains("bytes"), "no per-connection line:\n{log}");

    let dir = TempDir::new();
    let refusing = refusing_address(&dir);
    let mut failing = Relay::start(&["127.0.0.1:0", &refusing]);
    let _ = read_until_closed(&mut *connect(failing.address()));
    let warning = failing.wait_for_line("cannot connect");
    assert!(warning.contains(&refusing), "{warning}");
}

#[test]
fn verbose_logs_one_line_per_connection_with_the_exact_byte_counts() {
    let dir = TempDir::new();
    let backend = Backend::tcp(digest);
    let mut relay = Relay::start(&["-v", "127.0.0.1:0", &backend.connect_arg]);
    let sizes = [0, 1, 1000, 3 * MIB + 7];
    for (i, size) in sizes.into_iter().enumerate() {
        let stream = TcpStream::connect(relay.address()).unwrap();
        let peer = stream.local_addr().unwrap().to_string();
        let data = payload(size, 300 + i as u64);
        let reply = exchange(Box::new(stream), data.clone());
        assert_eq!(reply, digest_of(&data).into_bytes());
        let line = relay.wait_for_line(&peer);
        assert!(
            line.contains(&format!("{size} bytes up, {} bytes down", reply.len())),
            "{line}"
        );
        assert!(has_duration(&line), "the line gives the duration: {line}");
    }
    let mut unix = Relay::start(&["-v", &dir.arg("relay.sock"), &backend.connect_arg]);
    let data = payload(12345, 9);
    let reply = exchange(connect(unix.address()), data);
    let line = unix.wait_for_line("12345 bytes up");
    assert!(
        line.contains(&format!("{} bytes down", reply.len())),
        "{line}"
    );
    relay.signal(Signal::TERM);
    let (_, log) = relay.finish();
    assert_eq!(
        log.matches("bytes up").count(),
        sizes.len(),
        "one line per connection:\n{log}"
    );
}

#[test]
fn when_stderr_is_the_journal_lines_carry_priorities_instead_of_timestamps() {
    let dir = TempDir::new();
    let refusing = refusing_address(&dir);
    let mut relay = Relay::start_journal(command(&["127.0.0.1:0", &refusing]), 1);
    let _ = read_until_closed(&mut *connect(relay.address()));
    let warning = relay.wait_for_line("cannot connect");
    assert!(
        warning.starts_with("<4>"),
        "a warning has priority 4: {warning}"
    );
    relay.signal(Signal::TERM);
    let (status, log) = relay.finish();
    assert!(status.success());
    for line in log.lines() {
        let bytes = line.as_bytes();
        let prefixed = bytes.len() > 3
            && bytes[0] == b'<'
            && (b'0'..=b'7').contains(&bytes[1])
            && bytes[2] == b'>';
        assert!(prefixed, "a <N> prefix: {line}");
        assert!(!line[3..].starts_with("20"), "no timestamp: {line}");
    }
    // A JOURNAL_STREAM that names another file is not the journal.
    let mut cmd = command(&["127.0.0.1:0", &refusing]);
    cmd.env("JOURNAL_STREAM", "1:1");
    let relay = Relay::start_command(cmd, 1);
    for line in relay.log().lines() {
        assert!(!line.starts_with('<'), "no priority prefix: {line}");
    }
}
