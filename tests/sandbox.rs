//! The self-sandbox, proven from outside: `/proc/PID/status` of a running
//! relay, strict and best-effort start-up on an "older kernel". (What a
//! confined thread can still do is tested in src/sandbox/confined_tests.rs, with the
//! very policy the relay computes.)

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::*;

/// The start-up line that says what the sandbox enforced (it comes before
/// `listening on`, so it is already in the log once the relay is started).
fn sandbox_line(relay: &Relay) -> String {
    let log = relay.log();
    log.lines()
        .find(|l| l.contains("sandbox: "))
        .unwrap_or_else(|| panic!("no sandbox line in:\n{log}"))
        .to_string()
}

/// The Landlock ABI the relay uses here, as its start-up line says
/// (0: none).
fn landlock_abi() -> i32 {
    let finished = run_command(command(&[
        "--exit-idle-time",
        "1ms",
        "127.0.0.1:0",
        "127.0.0.1:9",
    ]));
    finished
        .stderr
        .split("landlock ABI ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The `Cap*` and `NoNewPrivs` lines of every thread of `pid`.
fn thread_security(pid: i32) -> Vec<(String, Vec<(String, String)>)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let fields = status
            .lines()
            .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_string(), v.trim().to_string())
            })
            .collect();
        threads.push((task.display().to_string(), fields));
    }
    threads
}

fn assert_confined(pid: i32) {
    let threads = thread_security(pid);
    assert!(
        threads.len() > 1,
        "the relay runs several threads: {threads:?}"
    );
    for (task, fields) in threads {
        for (key, value) in &fields {
            let want = if key == "NoNewPrivs" {
                "1"
            } else {
                "0000000000000000"
            };
            assert_eq!(value, want, "{task}: {key}");
        }
        assert_eq!(
            fields.len(),
            6,
            "{task}: CapInh/CapPrm/CapEff/CapBnd/CapAmb/NoNewPrivs: {fields:?}"
        );
    }
}

#[test]
fn every_thread_has_no_capabilities_and_no_new_privs() {
    if !is_root() {
        skip("needs root (an unprivileged relay keeps the bounding set)");
        return;
    }
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&[&dir.arg("s.sock"), &backend.connect_arg]);
    // Threads of the blocking pool and executor start on demand: make the
    // relay use them before looking.
    assert_eq!(
        exchange(connect(relay.address()), b"ping".to_vec()),
        b"ping"
    );
    assert_confined(relay.pid());
    if landlock_abi() >= 6 {
        let line = sandbox_line(&relay);
        assert!(line.contains("fully enforced"), "{line}");
        assert!(
            line.contains(&format!("tcp connect: {}", port_of(&backend.connect_arg))),
            "{line}"
        );
        assert!(line.contains("scoped: abstract-unix, signal"), "{line}");
        assert!(
            line.contains("capabilities: none; no_new_privs: yes"),
            "{line}"
        );
    }
}

#[test]
fn privileged_port_as_root_then_nothing_privileged_left() {
    if !is_root() {
        skip("needs root to bind a privileged port");
        return;
    }
    let Some(port) = (900..1000).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()) else {
        skip("no free privileged port");
        return;
    };
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&[&format!("127.0.0.1:{port}"), &backend.connect_arg]);
    assert_eq!(relay.port(), port);
    let data = payload(1 << 20, 3);
    assert_eq!(exchange(connect(relay.address()), data.clone()), data);
    assert_confined(relay.pid());
}

#[test]
fn unprivileged_user_runs_and_relays() {
    if !is_root() {
        skip("needs root to switch to nobody");
        return;
    }
    let dir = TempDir::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let backend = Backend::tcp(echo);
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(relay_bin())
        .args([&dir.arg("nobody.sock"), &backend.connect_arg]);
    let mut relay = Relay::start_command(command, 1);
    let line = sandbox_line(&relay);
    assert!(line.contains("no_new_privs: yes"), "{line}");
    let data = payload(2 << 20, 4);
    assert_eq!(exchange(connect(relay.address()), data.clone()), data);
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    assert!(
        status.contains("CapEff:\t0000000000000000") && status.contains("NoNewPrivs:\t1"),
        "{status}"
    );
    relay.signal(Signal::TERM);
    let (exit, _) = relay.finish();
    assert!(exit.success());
    assert!(
        !dir.join("nobody.sock").exists(),
        "an unprivileged relay removes its socket file too"
    );
}

#[test]
fn strict_passes_here_and_fails_clearly_on_an_older_abi() {
    if landlock_abi() < 6 || !is_root() {
        skip(&format!(
            "needs root and Landlock ABI 6 (this kernel: {})",
            landlock_abi()
        ));
        return;
    }
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let socket = dir.arg("strict.sock");
    let relay = Relay::start(&["--sandbox", "strict", &socket, &backend.connect_arg]);
    assert_eq!(
        exchange(connect(relay.address()), b"strict".to_vec()),
        b"strict"
    );
    drop(relay);

    let mut strict = command(&[
        "--sandbox",
        "strict",
        &dir.arg("old.sock"),
        &backend.connect_arg,
    ]);
    strict.env("SIMPLETCPUNIXRELAY_LANDLOCK_ABI_MAX", "5");
    let finished = run_command(strict);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("--sandbox strict"),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("scoping (need Landlock ABI 6, have 5)"),
        "{}",
        finished.stderr
    );
    assert!(
        !dir.join("old.sock").exists(),
        "a refused start leaves nothing behind"
    );

    // Best effort on the same "old kernel" starts, and says what is missing.
    let mut best_effort = command(&[&dir.arg("old.sock"), &backend.connect_arg]);
    best_effort.env("SIMPLETCPUNIXRELAY_LANDLOCK_ABI_MAX", "5");
    let relay = Relay::start_command(best_effort, 1);
    let line = sandbox_line(&relay);
    assert!(
        line.contains("landlock ABI 5 partially enforced") && line.contains("not enforced"),
        "{line}"
    );
    assert_eq!(exchange(connect(relay.address()), b"old".to_vec()), b"old");
}

#[test]
fn sandbox_off_warns() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&["--sandbox", "off", "127.0.0.1:0", &backend.connect_arg]);
    let line = sandbox_line(&relay);
    assert!(line.contains("sandbox: off"), "{line}");
    assert!(line.contains("warning"), "{line}");
}
