//! Faults around name resolution for a host-name CONNECT, which a helper
//! process (`resolver`) does for the relay.
//!
//! - The files the resolver reads are replaced under the sandbox (a new file
//!   renamed over the old one, a symlink swapped for the file): the next
//!   client is resolved with the new file. The relay runs in a mount
//!   namespace of its own where `/etc` is a temporary directory holding
//!   copies of the files it needs; the test changes that directory from
//!   outside the namespace. The machine's own `/etc` is only read, to copy
//!   from.
//! - The helper is killed: it is reaped, the relay drains its connections
//!   and exits 1 with one error line that says how the helper died.
//! - A stop signal reaches relay and helper at once (as systemd's
//!   control-group kill does): an ordinary stop, no error.
//! - A name with more addresses than one answer datagram holds: every one
//!   is tried.
//! - Many clients wait for a name server that never answers: the helper
//!   runs a bounded number of look-ups at once, not a thread per client.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bounds each client's wait for its backend's answer.
const QUICK: Duration = Duration::from_secs(5);

/// The host name CONNECT uses; only the private `/etc/hosts` knows it.
const NAME: &str = "backend.test";

/// A temporary tree whose `etc/` becomes the relay's `/etc`.
struct PrivateEtc {
    tree: TempDir,
    etc: PathBuf,
}

impl PrivateEtc {
    /// `etc/` with copies of what the relay needs from the machine's `/etc`
    /// (the dynamic loader's cache, the user and group databases, the
    /// resolver's settings), name resolution from files only, and a hosts
    /// file mapping [`NAME`] to `address`.
    fn new(address: &str) -> PrivateEtc {
        PrivateEtc::with_hosts(&hosts_mapping(address))
    }

    /// As [`PrivateEtc::new`], with `hosts` as the hosts file.
    fn with_hosts(hosts: &str) -> PrivateEtc {
        let tree = TempDir::new();
        let etc = tree.join("etc");
        std::fs::create_dir(&etc).unwrap();
        for name in [
            "ld.so.cache",
            "ld.so.conf",
            "passwd",
            "group",
            "host.conf",
            "gai.conf",
            "localtime",
        ] {
            let source = Path::new("/etc").join(name);
            if source.exists() {
                std::fs::copy(&source, etc.join(name)).unwrap();
            }
        }
        std::fs::write(
            etc.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nhosts: files\n",
        )
        .unwrap();
        std::fs::write(etc.join("resolv.conf"), "# no name servers: files only\n").unwrap();
        std::fs::write(etc.join("hosts"), hosts).unwrap();
        PrivateEtc { tree, etc }
    }

    /// Replaces `etc/hosts` as an editor does: writes a new file beside it
    /// and renames it over the old one.
    fn rename_hosts_to(&self, address: &str) {
        let new = self.etc.join("hosts.new");
        std::fs::write(&new, hosts_mapping(address)).unwrap();
        std::fs::rename(&new, self.etc.join("hosts")).unwrap();
    }

    /// Replaces `etc/hosts` by a symlink to a file in a new directory of the
    /// tree, as systemd-resolved does with `/etc/resolv.conf`. The target is
    /// absolute, so it resolves the same inside the relay's namespace.
    fn symlink_hosts_to(&self, address: &str) {
        let elsewhere = self.tree.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let target = elsewhere.join("hosts");
        std::fs::write(&target, hosts_mapping(address)).unwrap();
        let link = self.etc.join("hosts.link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        std::fs::rename(&link, self.etc.join("hosts")).unwrap();
    }

    /// Makes `command` run in a mount namespace of its own with `etc/`
    /// bind-mounted over `/etc`.
    fn apply(&self, command: &mut Command) {
        bind_in_private_mount_namespace(command, &self.etc, Path::new("/etc"));
    }
}

fn hosts_mapping(address: &str) -> String {
    format!("127.0.0.1 localhost\n{address} {NAME}\n")
}

/// Two backends on the same port, A on 127.0.0.1 and B on 127.0.0.2; each
/// answers every connection with its own letter.
fn backends_a_and_b() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let Ok(b) = TcpListener::bind(("127.0.0.2", port)) else {
            continue; // that port is taken on 127.0.0.2: pick another
        };
        let answer = |letter: &'static [u8]| {
            move |mut conn: Box<dyn Conn>| {
                let _ = conn.write_all(letter);
            }
        };
        return (
            Backend::tcp_on(a, answer(b"A")),
            Backend::tcp_on(b, answer(b"B")),
            port,
        );
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// Connects a client through the relay: the letter of the backend that
/// answered it.
fn reached(relay: &Relay) -> String {
    let mut client = TcpStream::connect(relay.address()).unwrap();
    client.set_read_timeout(Some(QUICK)).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    match client.read_to_string(&mut answer) {
        Ok(_) => answer,
        Err(e) => panic!("no answer through the relay: {e}; log:\n{}", relay.log()),
    }
}

/// Asserts that the next client through `relay` reaches the backend called
/// `letter`; `when` says at which step, for the failure message.
fn assert_reaches(relay: &Relay, letter: &str, when: &str) {
    assert_eq!(reached(relay), letter, "{when}; log:\n{}", relay.log());
}

/// Backends A and B on one port, and a relay to `backend.test:PORT` under a
/// private `/etc` that maps the name to A, with the default sandbox, that
/// has already relayed one client to A. Dropped in the order of the fields.
struct Resolving {
    relay: Relay,
    etc: PrivateEtc,
    _b: Backend,
    _a: Backend,
}

impl Resolving {
    fn to_a() -> Resolving {
        let (a, b, port) = backends_a_and_b();
        let etc = PrivateEtc::new("127.0.0.1");
        let mut command = command(&["127.0.0.1:0", &format!("{NAME}:{port}")]);
        etc.apply(&mut command);
        let relay = Relay::start_command(command, 1);
        assert_reaches(&relay, "A", "before any change");
        Resolving {
            relay,
            etc,
            _b: b,
            _a: a,
        }
    }
}

#[test]
fn a_hosts_file_renamed_over_the_old_one_is_used_for_the_next_client() {
    if !is_root() {
        return skip("mount namespaces need root");
    }
    let resolving = Resolving::to_a();

    resolving.etc.rename_hosts_to("127.0.0.2");

    assert_reaches(&resolving.relay, "B", "after the rename");
}

#[test]
fn a_hosts_file_replaced_by_a_symlink_elsewhere_is_used_for_the_next_client() {
    if !is_root() {
        return skip("mount namespaces need root");
    }
    let resolving = Resolving::to_a();

    resolving.etc.symlink_hosts_to("127.0.0.2");

    assert_reaches(&resolving.relay, "B", "after the symlink swap");
}

#[test]
fn hosts_renamed_then_swapped_for_a_symlink_keeps_resolving_each_time() {
    if !is_root() {
        return skip("mount namespaces need root");
    }
    let resolving = Resolving::to_a();

    resolving.etc.rename_hosts_to("127.0.0.2");
    assert_reaches(&resolving.relay, "B", "after the rename");

    resolving.etc.symlink_hosts_to("127.0.0.1");
    assert_reaches(&resolving.relay, "A", "after the symlink swap");
}

/// The relay's helper: its child process named `resolver`.
fn helper_of(relay: &Relay) -> i32 {
    let mut helper = None;
    wait_until("the resolver helper", || {
        helper = children(relay.pid())
            .into_iter()
            .find(|pid| command_name(*pid).as_deref() == Some("resolver"));
        helper.is_some()
    });
    helper.unwrap()
}

/// The children of every thread of process `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .map(|pid| pid.parse().unwrap())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn command_name(pid: i32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end().to_string())
}

/// The state letter of process `pid` (`S`, `R`, `Z` for a zombie…), or
/// `None` once it is gone (reaped).
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE …": the name may hold spaces and parentheses.
    stat.rsplit_once(") ")?.1.chars().next()
}

fn assert_alive(pid: i32, when: &str, relay: &Relay) {
    let state = process_state(pid);
    assert!(
        matches!(state, Some(state) if state != 'Z'),
        "the helper is alive {when} (state {state:?}); log:\n{}",
        relay.log()
    );
}

/// A relay from 127.0.0.1 to `localhost:PORT` of an echo backend (so that
/// it runs a resolver helper), with a client through it that has already
/// had one message echoed.
fn relaying_to_localhost(mut command_for: impl FnMut(&[&str]) -> Command) -> Echoing {
    let backend = Backend::tcp(echo);
    let port = port_of(&backend.connect_arg);
    let relay = Relay::start_command(
        command_for(&["127.0.0.1:0", &format!("localhost:{port}")]),
        1,
    );
    let mut client = TcpStream::connect(relay.address()).unwrap();
    client.set_read_timeout(Some(QUICK)).unwrap();
    assert_echoed(&mut client, b"before", &relay);
    Echoing {
        relay,
        client,
        _backend: backend,
    }
}

struct Echoing {
    relay: Relay,
    client: TcpStream,
    _backend: Backend,
}

fn assert_echoed(client: &mut TcpStream, message: &[u8], relay: &Relay) {
    client.write_all(message).unwrap();
    let mut echoed = vec![0; message.len()];
    if let Err(e) = client.read_exact(&mut echoed) {
        panic!("no echo through the relay: {e}; log:\n{}", relay.log());
    }
    assert_eq!(echoed, message);
}

/// Ends the client's sending and reads the clean end of the echo.
fn finish_client(client: &mut TcpStream, relay: &Relay) {
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    if let Err(e) = client.read_to_end(&mut rest) {
        panic!("no clean end through the relay: {e}; log:\n{}", relay.log());
    }
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("error")).collect()
}

#[test]
fn a_killed_resolver_helper_is_reaped_and_the_relay_drains_then_exits_1() {
    let Echoing {
        mut relay,
        mut client,
        _backend,
    } = relaying_to_localhost(command);
    let helper = helper_of(&relay);

    signal(helper, Signal::KILL).unwrap();

    // Reaped, not a zombie, while the relay still runs for its client.
    wait_until("the killed helper to be reaped", || {
        process_state(helper).is_none()
    });
    relay.wait_for_line("stopping: waiting up to");
    assert!(relay.running(), "the relay drains; log:\n{}", relay.log());
    assert!(
        TcpStream::connect(relay.address()).is_err(),
        "no new client is accepted; log:\n{}",
        relay.log()
    );
    // The open connection goes on, needing no resolver.
    assert_echoed(&mut client, b"after the helper died", &relay);
    finish_client(&mut client, &relay);
    let started = Instant::now();
    let (status, log) = relay.finish();
    assert!(started.elapsed() < QUICK, "exits once drained");
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "one error line; log:\n{log}");
    assert!(
        errors[0].contains(&format!(
            "the resolver helper (pid {helper}) was killed by signal 9 (SIGKILL)"
        )),
        "the error says how the helper died; log:\n{log}"
    );
}

#[test]
fn a_stop_signal_to_relay_and_helper_at_once_is_an_ordinary_stop() {
    // Relay and helper in a process group of their own, signalled together
    // as systemd signals a unit's control group.
    let Echoing {
        mut relay,
        mut client,
        _backend,
    } = relaying_to_localhost(|args| {
        let mut command = command(args);
        command.process_group(0);
        command
    });
    let helper = helper_of(&relay);
    let group = -relay.pid();

    signal(group, Signal::HUP).unwrap();
    relay.wait_for_line("SIGHUP");
    assert_alive(helper, "after SIGHUP", &relay);
    // SIGINT stops the relay too, SIGUSR2 hands it over: to the helper
    // alone (a terminal's ^C, `systemctl kill -s USR2`).
    signal(helper, Signal::INT).unwrap();
    signal(helper, Signal::USR2).unwrap();
    signal(group, Signal::TERM).unwrap();
    relay.wait_for_line("stopping: waiting up to");

    // The helper outlives the stop signals while the relay drains…
    assert_echoed(&mut client, b"while draining", &relay);
    assert_alive(helper, "after SIGINT, SIGUSR2 and SIGTERM", &relay);
    // …and ends with the relay, which stops cleanly.
    finish_client(&mut client, &relay);
    let (status, log) = relay.finish();
    assert!(status.success(), "exit 0; log:\n{log}");
    assert_eq!(
        error_lines(&log),
        Vec::<&str>::new(),
        "no error; log:\n{log}"
    );
    // (Reaped by whoever inherits it, which need not be quick about it.)
    wait_until("the helper to end with the relay", || {
        process_state(helper).is_none_or(|state| state == 'Z')
    });
}

#[test]
fn every_address_of_a_name_is_tried_150_of_them() {
    if !is_root() {
        return skip("mount namespaces need root");
    }
    // 127.0.1.1 to 127.0.1.150, all the same distance from 127.0.0.1, so
    // the C library keeps the file's order; only the last one listens.
    let last = TcpListener::bind("127.0.1.150:0").unwrap();
    let port = last.local_addr().unwrap().port();
    let _backend = Backend::tcp_on(last, |mut conn| {
        let _ = conn.write_all(b"the 150th");
    });
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for i in 1..=150 {
        hosts += &format!("127.0.1.{i} {NAME}\n");
    }
    let etc = PrivateEtc::with_hosts(&hosts);
    let mut command = command(&["127.0.0.1:0", &format!("{NAME}:{port}")]);
    etc.apply(&mut command);
    let relay = Relay::start_command(command, 1);

    assert_eq!(reached(&relay), "the 150th", "log:\n{}", relay.log());
}

/// A relay to `silent.test:80`, a name only a name server that never
/// answers could know.
struct Silent {
    relay: Relay,
    /// Reads every query and never answers.
    server: UdpSocket,
    _etc: PrivateEtc,
}

impl Silent {
    /// The name server listens on `address` port 53 (resolv.conf cannot
    /// name a port): one address per test, as tests run in parallel.
    /// `None` (the test is skipped) without root or that port.
    fn start(address: &str) -> Option<Silent> {
        if !is_root() {
            skip("mount namespaces and port 53 need root");
            return None;
        }
        let Ok(server) = UdpSocket::bind((address, 53)) else {
            skip(&format!("port 53 on {address} is taken"));
            return None;
        };
        let etc = PrivateEtc::new("127.0.0.1");
        std::fs::write(etc.etc.join("nsswitch.conf"), "hosts: files dns\n").unwrap();
        std::fs::write(
            etc.etc.join("resolv.conf"),
            format!("nameserver {address}\noptions timeout:30 attempts:1\n"),
        )
        .unwrap();
        let mut command = command(&["127.0.0.1:0", "silent.test:80", "--connect-timeout", "1min"]);
        etc.apply(&mut command);
        let relay = Relay::start_command(command, 1);
        Some(Silent {
            relay,
            server,
            _etc: etc,
        })
    }
}

#[test]
fn look_ups_waiting_when_the_helper_dies_fail_at_once_saying_how_it_died() {
    let Some(Silent {
        mut relay,
        server,
        _etc,
    }) = Silent::start("127.0.4.53")
    else {
        return;
    };
    let helper = helper_of(&relay);
    let mut client = TcpStream::connect(relay.address()).unwrap();
    let mut query = [0u8; 512];
    server.set_read_timeout(Some(QUICK)).unwrap();
    assert!(
        server.recv(&mut query).is_ok(),
        "the look-up waits for the name server"
    );

    signal(helper, Signal::KILL).unwrap();

    // Closed long before the name server's 30 s or the connect timeout.
    client.set_read_timeout(Some(QUICK)).unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "no bytes for a client that was never connected"
    );
    let (status, log) = relay.finish();
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let reason = format!("the resolver helper (pid {helper}) was killed by signal 9 (SIGKILL)");
    assert!(
        log.lines()
            .any(|l| l.contains("warning:") && l.contains("cannot resolve") && l.contains(&reason)),
        "the waiting client's warning says how the helper died; log:\n{log}"
    );
    assert_eq!(error_lines(&log).len(), 1, "one error line; log:\n{log}");
}

/// How many look-ups the helper may run at once (its pool of threads).
const LOOKUPS_AT_ONCE: usize = 8;

#[test]
fn look_ups_waiting_for_a_silent_name_server_take_a_bounded_number_of_threads() {
    // Every field bound: the private /etc must outlive the statement.
    let Some(Silent {
        relay,
        server: silent,
        _etc,
    }) = Silent::start("127.0.3.53")
    else {
        return;
    };
    let helper = helper_of(&relay);
    let threads = || {
        std::fs::read_dir(format!("/proc/{helper}/task"))
            .unwrap()
            .count()
    };

    let clients: Vec<TcpStream> = (0..3 * LOOKUPS_AT_ONCE)
        .map(|_| TcpStream::connect(relay.address()).unwrap())
        .collect();

    // The pool fills up: one thread per look-up, up to the bound…
    silent.set_read_timeout(Some(QUICK)).unwrap();
    wait_until("the helper's look-up threads", || {
        threads() > LOOKUPS_AT_ONCE
    });
    // …and no further, however long the clients wait.
    let watch = Instant::now() + Duration::from_millis(500);
    while Instant::now() < watch {
        assert!(
            threads() <= 1 + LOOKUPS_AT_ONCE,
            "{} threads in the helper for {} waiting clients; log:\n{}",
            threads(),
            clients.len(),
            relay.log()
        );
    }
    let mut query = [0u8; 512];
    assert!(
        silent.recv(&mut query).is_ok(),
        "the look-ups ask the name server"
    );
}
