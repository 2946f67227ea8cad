//! The command line: `--help`, `--version`, where options may stand, time
//! spans, and every usage error (exit status 2, one line naming the
//! argument, nothing created or removed).

mod common;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;

use common::*;

#[test]
fn help_lists_endpoints_options_and_defaults() {
    let finished = run_command(command(&["--help"]));
    assert!(
        finished.status.success(),
        "--help should exit 0: {finished:?}"
    );
    let help = &finished.stdout;
    // A short option must stand on its own, not only inside a long one.
    for short in ["-c", "-q", "-v"] {
        let bytes = help.as_bytes();
        let alone = help.match_indices(short).any(|(i, _)| {
            let before = if i == 0 { b' ' } else { bytes[i - 1] };
            let after = bytes.get(i + 2).copied().unwrap_or(b' ');
            matches!(before, b' ' | b'[' | b'\n') && !after.is_ascii_alphanumeric() && after != b'-'
        });
        assert!(alone, "--help should mention {short}:\n{help}");
    }
    for option in [
        "--connections-max",
        "--connect-timeout",
        "--idle-timeout",
        "--exit-idle-time",
        "--shutdown-timeout",
        "--socket-mode",
        "--socket-group",
        "--sandbox",
        "--version",
    ] {
        assert!(
            help.contains(option),
            "--help should mention {option}:\n{help}"
        );
    }
    for default in ["256", "10s", "30s", "infinity", "best-effort"] {
        assert!(
            help.contains(default),
            "--help should give the default {default}:\n{help}"
        );
    }
    for endpoint in ["tcp:", "unix:", "@", "sd-listen", "fd:"] {
        assert!(
            help.contains(endpoint),
            "--help should describe the endpoint form {endpoint}:\n{help}"
        );
    }
}

#[test]
fn version_prints_the_version() {
    let finished = run_command(command(&["--version"]));
    assert!(
        finished.status.success(),
        "--version should exit 0: {finished:?}"
    );
    assert!(
        finished.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version should print {}: {:?}",
        env!("CARGO_PKG_VERSION"),
        finished.stdout
    );
}

#[test]
fn options_may_stand_before_between_and_after_the_endpoints() {
    let dir = TempDir::new();
    let backend = Backend::tcp(digest);
    let listen = dir.arg("relay.sock");
    // -v before, -c between, --idle-timeout after: each must take effect.
    let mut relay = Relay::start(&[
        "-v",
        &listen,
        "-c",
        "1",
        &backend.connect_arg,
        "--idle-timeout",
        "5min 20s",
    ]);
    assert_eq!(
        exchange(connect(relay.address()), b"hi".to_vec()),
        digest_of(b"hi").into_bytes()
    );
    relay.wait_for_line("2 bytes up");
}

#[test]
fn time_spans_use_systemd_syntax() {
    let backend = Backend::tcp(echo);
    for span in [
        "90", "90s", "500ms", "1s", "5min 20s", "1h", "1min30s", "infinity",
    ] {
        let mut relay = Relay::start(&[
            "--connect-timeout",
            span,
            "--idle-timeout",
            span,
            "--exit-idle-time",
            span,
            "--shutdown-timeout",
            span,
            "127.0.0.1:0",
            &backend.connect_arg,
        ]);
        relay.signal(Signal::TERM);
        let status = relay.wait_exit();
        assert!(status.success(), "{span}: {status:?}\n{}", relay.log());
    }
}

/// What is at the LISTEN path before a usage error; it must be the same after.
#[derive(Clone, Copy, Debug)]
enum Before {
    Nothing,
    StaleSocket,
}

/// Runs the relay with `args` (where `{listen}` stands for a socket path in
/// a fresh directory) and asserts a usage error: exit status 2, exactly one
/// line on standard error naming `argument` (and `reason`, if given), and
/// the directory exactly as it was.
fn assert_usage_error(args: &[&str], argument: &str, reason: Option<&str>) {
    for before in [Before::Nothing, Before::StaleSocket] {
        let dir = TempDir::new();
        let listen = dir.arg("relay.sock");
        let inode = match before {
            Before::Nothing => None,
            Before::StaleSocket => {
                drop(UnixListener::bind(&listen).unwrap());
                Some(std::fs::metadata(&listen).unwrap().ino())
            }
        };
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{listen}", &listen))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let finished = run_command(command(&args));
        let context = format!("{args:?} with {before:?} at LISTEN: {finished:?}");
        assert_eq!(finished.status.code(), Some(2), "{context}");
        let lines = finished.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "exactly one line on standard error: {context}"
        );
        assert!(lines[0].contains("usage error"), "{context}");
        assert!(
            lines[0].contains(argument),
            "the line should name {argument:?}: {context}"
        );
        if let Some(reason) = reason {
            assert!(
                lines[0].to_lowercase().contains(reason),
                "the line should say {reason:?}: {context}"
            );
        }
        assert!(finished.stdout.is_empty(), "{context}");
        match inode {
            None => assert!(
                dir.entries().is_empty(),
                "nothing should be created: {:?}; {context}",
                dir.entries()
            ),
            Some(inode) => {
                assert_eq!(dir.entries(), ["relay.sock"], "{context}");
                let now = std::fs::metadata(&listen).unwrap().ino();
                assert_eq!(
                    now, inode,
                    "the stale socket must not be replaced: {context}"
                );
            }
        }
    }
}

const CONNECT: &str = "127.0.0.1:9";

#[test]
fn bad_endpoints_are_usage_errors() {
    let long_path = format!("/tmp/{}", "x".repeat(104)); // 109 bytes
    let long_name = format!("@{}", "x".repeat(108));
    let cases: &[(&[&str], &str, Option<&str>)] = &[
        (&["", CONNECT], "LISTEN", Some("empty")),
        (&["{listen}", ""], "CONNECT", Some("empty")),
        (&["{listen}", "127.0.0.1"], "127.0.0.1", Some("port")),
        (
            &["{listen}", "backend.example"],
            "backend.example",
            Some("port"),
        ),
        (&["127.0.0.1:", CONNECT], "127.0.0.1:", Some("port")),
        (&["{listen}", "127.0.0.1:65536"], "65536", Some("port")),
        (&["[::1]:70000", CONNECT], "70000", Some("port")),
        (&["{listen}", "sd-listen"], "sd-listen", Some("listen")),
        (
            &["{listen}", "sd-listen:web"],
            "sd-listen:web",
            Some("listen"),
        ),
        (&["{listen}", "fd:3"], "fd:3", Some("listen")),
        (&[&long_path, CONNECT], &long_path, Some("long")),
        (&["{listen}", &long_path], &long_path, Some("long")),
        (&[&long_name, CONNECT], &long_name, Some("long")),
        (
            &["{listen}", &format!("unix:{long_path}")],
            &long_path,
            Some("long"),
        ),
        (&["example.org:80", CONNECT], "example.org", None),
    ];
    for (args, argument, reason) in cases {
        assert_usage_error(args, argument, *reason);
    }
}

#[test]
fn a_unix_path_of_107_bytes_is_accepted() {
    // The kernel's limit is 108 bytes including the NUL: 107 must work.
    let dir = TempDir::new();
    let base = dir.arg("");
    let path = format!("{base}{}", "s".repeat(107 - base.len()));
    assert_eq!(path.len(), 107);
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&[&path, &backend.connect_arg]);
    assert_eq!(exchange(connect(relay.address()), b"107".to_vec()), b"107");
}

#[test]
fn bad_options_are_usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--frobnicate", "{listen}", CONNECT], "--frobnicate"),
        (&["{listen}", CONNECT, "extra"], "extra"),
        (&["{listen}"], "CONNECT"),
        (&["-c", "abc", "{listen}", CONNECT], "-c"),
        (
            &["--connections-max", "many", "{listen}", CONNECT],
            "--connections-max",
        ),
        (
            &["--connect-timeout", "soon", "{listen}", CONNECT],
            "--connect-timeout",
        ),
        (
            &["{listen}", "--idle-timeout", "10x", CONNECT],
            "--idle-timeout",
        ),
        (
            &["{listen}", CONNECT, "--exit-idle-time", "-1s"],
            "--exit-idle-time",
        ),
        (
            &["--shutdown-timeout", "5 fortnights", "{listen}", CONNECT],
            "--shutdown-timeout",
        ),
        (
            &["--socket-mode", "0999", "{listen}", CONNECT],
            "--socket-mode",
        ),
        (
            &["--socket-mode", "rw-rw----", "{listen}", CONNECT],
            "--socket-mode",
        ),
        (&["--sandbox", "maybe", "{listen}", CONNECT], "--sandbox"),
        (
            &["--proxy-protocol", "v3", "{listen}", CONNECT],
            "--proxy-protocol",
        ),
        (&["--allow-uid", "0", "127.0.0.1:0", CONNECT], "--allow-uid"),
        (&["--allow-gid", "0", "127.0.0.1:0", CONNECT], "--allow-gid"),
    ];
    for (args, argument) in cases {
        assert_usage_error(args, argument, None);
    }
}

#[test]
fn sd_listen_without_passed_sockets_is_a_usage_error() {
    for listen in ["sd-listen", "sd-listen:web"] {
        // Nothing passed at all.
        let mut plain = command(&[listen, CONNECT]);
        plain
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        // Sockets passed to another process (LISTEN_PID is not ours).
        let mut other = command(&[listen, CONNECT]);
        other.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
        for cmd in [plain, other] {
            let finished = run_command(cmd);
            assert_eq!(finished.status.code(), Some(2), "{listen}: {finished:?}");
            let lines = finished.stderr_lines();
            assert_eq!(lines.len(), 1, "{finished:?}");
            assert!(lines[0].contains(listen), "{finished:?}");
        }
    }
}

#[test]
fn fd_that_is_not_a_stream_socket_is_a_usage_error() {
    let (pipe_reader, _pipe_writer) = std::io::pipe().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut with_pipe = command(&["fd:3", CONNECT]);
    pass_fds(&mut with_pipe, &[pipe_reader.as_raw_fd()]);
    let mut with_udp = command(&["fd:3", CONNECT]);
    pass_fds(&mut with_udp, &[udp.as_raw_fd()]);
    let mut closed = command(&["fd:3", CONNECT]);
    close_in_child(&mut closed, 3);
    for (what, cmd) in [
        ("a pipe", with_pipe),
        ("a UDP socket", with_udp),
        ("a closed fd", closed),
    ] {
        let finished = run_command(cmd);
        assert_eq!(finished.status.code(), Some(2), "{what}: {finished:?}");
        let lines = finished.stderr_lines();
        assert_eq!(lines.len(), 1, "{what}: {finished:?}");
        assert!(lines[0].contains("fd:3"), "{what}: {finished:?}");
    }
}

/// `--check` (what `systemctl reload` runs first): the verdict a start
/// would give, with its exit status and message, and nothing bound,
/// created or sent.
#[test]
fn check_judges_a_command_line_and_touches_nothing() {
    let dir = TempDir::new();
    let socket = dir.arg("relay.sock");
    // A port in use: a start would fail on it; the check binds nothing.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_arg = busy.local_addr().unwrap().to_string();
    let notify = TempDir::new();
    let manager = std::os::unix::net::UnixDatagram::bind(notify.join("notify")).unwrap();
    manager.set_nonblocking(true).unwrap();
    for listen in [socket.as_str(), busy_arg.as_str()] {
        let mut check = command(&["--check", "--fd-store", listen, "127.0.0.1:9"]);
        check.env("NOTIFY_SOCKET", notify.join("notify"));
        let finished = run_command(check);
        assert!(finished.status.success(), "{listen}: {finished:?}");
        assert!(
            finished.stderr.contains(&format!(
                "check: the configuration is valid: {listen} -> 127.0.0.1:9"
            )),
            "{finished:?}"
        );
    }
    assert!(
        dir.entries().is_empty(),
        "nothing created: {:?}",
        dir.entries()
    );
    let mut buffer = [0u8; 256];
    assert!(
        manager.recv(&mut buffer).is_err(),
        "nothing sent to the service manager"
    );

    // What a start would refuse, the check refuses, with the same status.
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--check", "--idle-timout", "5s", &socket, "127.0.0.1:9"],
            2,
            "'--idle-timout'",
        ),
        (
            &["--check", "--socket-mode", "08", &socket, "127.0.0.1:9"],
            2,
            "--socket-mode",
        ),
        (
            &["--check", &dir.arg("missing/relay.sock"), "127.0.0.1:9"],
            1,
            "does not exist",
        ),
        (
            &["--check", "--allow-uid", "0", "127.0.0.1:0", "127.0.0.1:9"],
            2,
            "--allow-uid",
        ),
    ];
    for (args, status, says) in cases {
        let (got, stderr) = run_to_exit(args);
        assert_eq!(got.code(), Some(status), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    std::fs::write(dir.join("file"), b"mine").unwrap();
    let (got, stderr) = run_to_exit(&["--check", &dir.arg("file"), "127.0.0.1:9"]);
    assert_eq!(got.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join("file")).unwrap(),
        b"mine",
        "untouched"
    );
}
