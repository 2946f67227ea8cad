//! The resolver helper as a process of its own, seen from outside: the relay
//! executes it afresh (`/proc/self/exe`) for a host-name CONNECT, so it holds
//! only its standard descriptors whatever the relay inherited, has only the
//! environment its look-ups read, still logs the journal's way when the
//! relay does, and ends when the relay is killed. Its name on the command
//! line makes nothing of an ordinary start.

mod common;
use common::*;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// A relay from 127.0.0.1 to `localhost:PORT` of an echo backend, so that
/// it runs a resolver helper; `prepare` adds to its command.
fn relay_to_localhost(prepare: impl FnOnce(&mut Command)) -> (Relay, Backend) {
    let backend = Backend::tcp(echo);
    let target = format!("localhost:{}", port_of(&backend.connect_arg));
    let mut command = command(&["127.0.0.1:0", &target]);
    prepare(&mut command);
    (Relay::start_command(command, 1), backend)
}

/// The relay's only child: its resolver helper.
fn helper_of(relay: &Relay) -> i32 {
    let pid = relay.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let children: Vec<i32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(children.len(), 1, "one helper: {children:?}");
    children[0]
}

/// The descriptors process `pid` holds, in order.
fn descriptors(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort_unstable();
    fds
}

/// Whether process `pid` is gone or a zombie (ended, not yet reaped).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, s)| s.starts_with('Z')),
    }
}

#[test]
fn the_helper_holds_only_its_standard_descriptors_whatever_the_relay_inherited() {
    // A descriptor the relay inherits open across exec and never takes
    // (no LISTEN_FDS): the helper must not hold it.
    let inherited = File::open("/dev/null").unwrap();
    let (mut relay, _backend) = relay_to_localhost(|command| {
        pass_fds(command, &[inherited.as_raw_fd()]);
    });
    assert!(
        descriptors(relay.pid()).contains(&3),
        "the relay holds the inherited descriptor"
    );
    // A look-up first: the helper is at rest again afterwards.
    assert_eq!(
        exchange(connect(relay.address()), b"ping".to_vec()),
        b"ping"
    );
    let helper = helper_of(&relay);

    assert_eq!(descriptors(helper), vec![0, 1, 2], "log:\n{}", relay.log());
    let socket = std::fs::read_link(format!("/proc/{helper}/fd/0")).unwrap();
    assert!(
        socket.to_string_lossy().starts_with("socket:"),
        "standard input is its socket: {socket:?}"
    );
    assert!(relay.running());
}

/// Of the relay's environment, the helper gets only what its look-ups and
/// its sandbox read: glibc's resolver options and the relay's own knobs.
#[test]
fn the_helper_gets_only_the_environment_its_look_ups_read() {
    let (relay, _backend) = relay_to_localhost(|command| {
        command
            .env("A_SECRET_OF_THE_RELAY", "do not pass it on")
            .env("RES_OPTIONS", "attempts:2");
    });
    let helper = helper_of(&relay);

    let environment = std::fs::read(format!("/proc/{helper}/environ")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&environment),
        "RES_OPTIONS=attempts:2\0"
    );
    // And still resolving.
    assert_eq!(
        exchange(connect(relay.address()), b"ping".to_vec()),
        b"ping"
    );
}

/// `SIMPLETCPUNIXRELAY_LANDLOCK_ABI_MAX` (an older kernel, for tests) caps
/// the helper's sandbox as it caps the relay's.
#[test]
fn the_landlock_cap_reaches_the_helper() {
    let (relay, _backend) = relay_to_localhost(|command| {
        command
            .arg("-v")
            .env("SIMPLETCPUNIXRELAY_LANDLOCK_ABI_MAX", "3");
    });
    // The helper reports before the relay listens.
    let log = relay.log();
    let line = log.lines().find(|l| l.contains("resolver sandbox: "));
    assert!(line.is_some_and(|l| l.contains("landlock ABI 3 ")), "{log}");
}

/// Without /proc the relay cannot execute its own binary as the helper: a
/// start and `--check` (what `systemctl reload` runs first) both say so.
#[test]
fn without_proc_a_host_name_connect_fails_naming_proc() {
    if !is_root() {
        return skip("needs root to mount over /proc in a mount namespace");
    }
    if skip_if_missing(&["unshare"], "util-linux") {
        return;
    }
    let relay = relay_bin();
    for check in [false, true] {
        let script = format!(
            "mount -t tmpfs none /proc && exec {} {} 127.0.0.1:0 localhost:9",
            relay.display(),
            if check { "--check" } else { "" }
        );
        let output = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "check {check}: {log}");
        assert!(
            log.contains("/proc/self/exe") && log.contains("/proc mounted"),
            "check {check}: {log}"
        );
    }
}

#[test]
fn the_helper_ends_when_the_relay_is_killed() {
    let (mut relay, _backend) = relay_to_localhost(|_| {});
    let helper = helper_of(&relay);
    assert_eq!(
        exchange(connect(relay.address()), b"ping".to_vec()),
        b"ping"
    );

    relay.child.kill().unwrap();
    relay.child.wait().unwrap();

    wait_until("the helper to end with the relay", || ended(helper));
}

/// Under the journal the relay says so to its helper, which cannot learn it
/// from an environment it does not have: its line has error priority too.
#[cfg(debug_assertions)]
#[test]
fn a_forbidden_call_in_the_helper_is_logged_the_journals_way() {
    let backend = Backend::tcp(echo);
    let target = format!("localhost:{}", port_of(&backend.connect_arg));
    let (mut reader, writer) = std::io::pipe().unwrap();
    let (device, inode) = device_and_inode(writer.as_raw_fd());
    let mut command = command(&["127.0.0.1:0", &target]);
    command
        .env("SIMPLETCPUNIXRELAY_SECCOMP_TEST_CALL", "resolver:bind")
        .env("JOURNAL_STREAM", format!("{device}:{inode}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer));
    let mut child = ChildGuard(command.spawn().unwrap());
    drop(command);
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut log);
        log
    });
    // The helper dies of it, and the relay of the helper's death.
    let status = wait_exit(&mut child.0, DEADLINE);
    let log = log.join().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    let needle = format!(
        "<3>simpletcpunixrelay: error: resolver: forbidden system call bind ({})",
        libc::SYS_bind
    );
    assert!(
        log.lines().any(|l| l.starts_with(&needle)),
        "no line starting {needle:?} in:\n{log}"
    );
}

#[test]
fn the_helpers_argument_alone_is_a_usage_error() {
    let backend = Backend::tcp(echo);
    let target = format!("localhost:{}", port_of(&backend.connect_arg));
    let (status, log) = run_to_exit(&["--resolver-helper", "127.0.0.1:0", &target]);
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("usage error"), "{log}");
}

#[test]
fn the_helpers_argument_is_neither_in_the_help_nor_in_the_completions() {
    for args in [
        &["--help"][..],
        &["--completions", "bash"],
        &["--completions", "zsh"],
        &["--completions", "fish"],
    ] {
        let finished = run_command(command(args));
        assert!(finished.status.success(), "{args:?}: {}", finished.stderr);
        assert!(!finished.stdout.is_empty(), "{args:?}");
        assert!(
            !finished.stdout.contains("resolver-helper"),
            "{args:?}: {}",
            finished.stdout
        );
    }
}
