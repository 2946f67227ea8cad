//! Socket activation, end to end through `systemd-socket-activate`: the
//! relay serves the sockets it is passed (`sd-listen`, `sd-listen:NAME`,
//! `fd:N`, one connection with `Accept=yes`), refuses misuse as a usage
//! error, and leaves a passed socket file where it is.
//!
//! A test that needs a tool or a privilege this machine lacks is skipped
//! (see `common::skip`), except in CI, where it fails.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitStatus;
use std::time::Duration;

use common::*;

/// `sd-listen` serves a TCP socket passed by socket activation.
#[test]
fn sd_listen_serves_a_passed_tcp_socket() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let listen = format!("127.0.0.1:{}", free_port());
    let relay_path = relay_bin();
    let mut relay = start_activator(
        &[
            "-l",
            &listen,
            relay_path.to_str().unwrap(),
            "sd-listen",
            &backend.connect_arg,
        ],
        1,
    );
    // The first client starts the relay; it is served like every other.
    let data = payload(200_000, 1);
    assert_eq!(exchange(connect(&listen), data.clone()), data);
    assert!(relay.wait_for_line("listening on ").ends_with(&listen));
    assert_eq!(exchange(connect(&listen), b"second".to_vec()), b"second");
    assert_eq!(backend.connections(), 2);
    relay.signal(Signal::TERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
}

/// `sd-listen:b` with two passed sockets named a (TCP) and b (Unix) serves b
/// only; a is left alone (its clients wait in the backlog, unanswered).
#[test]
fn sd_listen_by_name_serves_only_that_socket() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
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
            &backend.connect_arg,
        ],
        2,
    );
    let data = payload(50_000, 2);
    assert_eq!(exchange(connect(&unix), data.clone()), data);
    assert!(relay.wait_for_line("listening on ").ends_with(&unix));
    assert_eq!(backend.connections(), 1);

    let mut ignored = try_connect(&tcp).expect("a is still listening (backlog)");
    ignored.write_all(b"anyone?").unwrap();
    assert_silent(
        &mut *ignored,
        Duration::from_millis(500),
        "socket a must not be served",
    );
    assert_eq!(backend.connections(), 1, "a's client reached the backend");

    relay.signal(Signal::TERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
    assert_eq!(log.matches("listening on").count(), 1, "{log}");
}

/// With `-a` (Accept=yes) fd 3 is one connected socket: `sd-listen` and
/// `fd:3` both relay that connection, then the relay exits 0.
#[test]
fn accept_mode_relays_one_connection_then_exits_0() {
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let relay_path = relay_bin();
    for (seed, listen) in [(3, "sd-listen"), (4, "fd:3")] {
        let address = format!("127.0.0.1:{}", free_port());
        let mut activator = start_activator(
            &[
                "-a",
                "-l",
                &address,
                relay_path.to_str().unwrap(),
                listen,
                &backend.connect_arg,
            ],
            1,
        );
        let before = backend.connections();
        let data = payload(300_000, seed);
        assert_eq!(exchange(connect(&address), data.clone()), data, "{listen}");
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

/// The relay's own error lines on standard error (not the activator's), with
/// or without a timestamp before them.
fn relay_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("simpletcpunixrelay: "))
        .collect()
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
/// with nothing passed or with LISTEN_FDNAMES not naming every descriptor,
/// `fd:N` on a file, and, under socket activation,
/// `sd-listen:NAME` matching no socket and `fd:3` on a datagram socket.
/// Nothing is removed.
#[test]
fn activation_misuse_is_a_usage_error() {
    let backend = Backend::tcp(echo);

    let mut alone = command(&["sd-listen", &backend.connect_arg]);
    for variable in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        alone.env_remove(variable);
    }
    let output = run_command(alone);
    assert_usage_error(
        output.status,
        &output.stderr,
        "sd-listen",
        "no sockets were passed",
    );

    // A name for every passed descriptor, or none: sd_listen_fds_with_names
    // refuses anything else, and so does the relay.
    let mut miscounted = command(&["sd-listen", &backend.connect_arg]);
    miscounted
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "a:b")
        .env_remove("LISTEN_PID");
    let output = run_command(miscounted);
    assert_usage_error(
        output.status,
        &output.stderr,
        "sd-listen",
        "LISTEN_FDNAMES names 2 descriptors but LISTEN_FDS passes 1",
    );

    let on_a_file = command(&["fd:0", &backend.connect_arg]);
    let output = run_command_with_stdin(on_a_file, File::open(file!()).unwrap().into());
    assert_usage_error(output.status, &output.stderr, "fd:0", "not a socket");

    if let Some(t) = missing_tool(&["systemd-socket-activate"]) {
        skip(&format!(
            "{t} is not installed (apt-get install systemd): activated misuse not checked"
        ));
        return;
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
            &backend.connect_arg,
        ],
        1,
    );
    let _client = connect(&named); // starts the relay
    let (status, log) = activator.finish();
    assert_usage_error(status, &log, "sd-listen:nomatch", "FileDescriptorName");
    let kept = fs::symlink_metadata(&named).expect("the passed socket file is not removed");
    assert!(kept.file_type().is_socket());

    let udp = format!("127.0.0.1:{}", free_port());
    let mut activator =
        start_activator(&["-d", "-l", &udp, relay, "fd:3", &backend.connect_arg], 1);
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
    if skip_if_missing(&["systemd-socket-activate"], "systemd") {
        return;
    }
    let backend = Backend::tcp(echo);
    let dir = TempDir::new();
    let path = dir.arg("inherited.sock");
    let relay_path = relay_bin();
    let mut relay = start_activator(
        &[
            "-l",
            &path,
            relay_path.to_str().unwrap(),
            "sd-listen",
            &backend.connect_arg,
        ],
        1,
    );
    assert_eq!(exchange(connect(&path), b"hello".to_vec()), b"hello");
    assert!(relay.wait_for_line("listening on ").ends_with(&path));
    relay.signal(Signal::TERM);
    let (status, log) = relay.finish();
    assert!(status.success(), "{status}: {log}");
    let kept = fs::symlink_metadata(&path).expect("the inherited socket file stays");
    assert!(kept.file_type().is_socket());
}
