//! The self-sandbox, proven from outside (`/proc/PID/status` of a running
//! relay) and from inside: a thread of this test confines itself with the
//! very policy the relay computes, then tries what the relay must not do.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use common::*;
use simpletcpunixrelay::cli::{self, Command as CliCommand};
use simpletcpunixrelay::sandbox::{self, Policy};

/// The start-up line that says what the sandbox enforced (it comes before
/// `listening on`, so it is already in the log once the relay is started).
fn sandbox_line(relay: &Relay) -> String {
    let log = relay.log();
    log.lines()
        .find(|l| l.contains("sandbox: "))
        .unwrap_or_else(|| panic!("no sandbox line in:\n{log}"))
        .to_string()
}

fn landlock_abi() -> i32 {
    sandbox::kernel_abi()
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
    relay.signal(libc::SIGTERM);
    let (exit, _) = relay.finish();
    assert!(exit.success());
    assert!(
        !dir.join("nobody.sock").exists(),
        "an unprivileged relay removes its socket file too"
    );
}

/// The policy the relay derives for these arguments.
fn policy(args: &[&str]) -> Policy {
    let args: Vec<std::ffi::OsString> = args.iter().map(|s| s.into()).collect();
    let Ok(CliCommand::Run(config)) = cli::parse("simpletcpunixrelay", &args) else {
        panic!("bad arguments {args:?}")
    };
    Policy::derive(&config)
}

fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

#[test]
fn confined_thread_can_reach_connect_and_nothing_else() {
    if landlock_abi() < 6 {
        skip(&format!(
            "needs Landlock ABI 6 (this kernel: {})",
            landlock_abi()
        ));
        return;
    }
    let dir = TempDir::new();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port();
    let other_port = other.local_addr().unwrap().port();
    let outside_abstract = unique_name("outside");
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(outside_abstract.as_bytes())
            .unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let existing_file = dir.join("secret.txt");
    std::fs::write(&existing_file, "secret").unwrap();
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let victim_pid = victim.id() as i32;

    let policy = policy(&[&dir.arg("relay.sock"), &format!("127.0.0.1:{allowed_port}")]);
    let new_socket = dir.join("new.sock");
    let result = std::thread::spawn(move || {
        let report = sandbox::apply(&policy).expect("apply");
        assert!(report.missing.is_empty(), "{report}");
        let mut failures = Vec::new();
        let mut check = |what: &str, got: Option<i32>, want: i32| {
            if got != Some(want) {
                failures.push(format!("{what}: got errno {got:?}, want {want}"));
            }
        };
        check(
            "open an existing file",
            errno(std::fs::read(&existing_file)),
            libc::EACCES,
        );
        check(
            "read /etc/passwd",
            errno(std::fs::read("/etc/passwd")),
            libc::EACCES,
        );
        check(
            "create a socket file",
            errno(std::os::unix::net::UnixListener::bind(&new_socket)),
            libc::EACCES,
        );
        check(
            "bind a TCP port",
            errno(TcpListener::bind("127.0.0.1:0")),
            libc::EACCES,
        );
        check(
            "connect to another TCP port",
            errno(TcpStream::connect(("127.0.0.1", other_port))),
            libc::EACCES,
        );
        check(
            "connect to an outside abstract socket",
            errno({
                use std::os::linux::net::SocketAddrExt;
                let addr =
                    std::os::unix::net::SocketAddr::from_abstract_name(outside_abstract.as_bytes())
                        .unwrap();
                std::os::unix::net::UnixStream::connect_addr(&addr)
            }),
            libc::EPERM,
        );
        // SAFETY: kill with a pid and a signal number.
        let killed = unsafe { libc::kill(victim_pid, libc::SIGTERM) };
        check(
            "signal another process",
            (killed != 0)
                .then(std::io::Error::last_os_error)
                .and_then(|e| e.raw_os_error()),
            libc::EPERM,
        );
        if let Err(e) = TcpStream::connect(("127.0.0.1", allowed_port)) {
            failures.push(format!("connect to CONNECT's port failed: {e}"));
        }
        // Capabilities, per thread.
        let status = std::fs::read_to_string("/proc/thread-self/status");
        // /proc is not readable once confined: that is the point.
        if status.is_ok() {
            failures.push("read /proc/thread-self/status".into());
        }
        failures
    })
    .join()
    .unwrap();
    let victim_alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    drop(abstract_listener);
    assert!(result.is_empty(), "the confined thread could: {result:#?}");
    assert!(victim_alive, "the signal must not have been delivered");
    assert!(!dir.join("new.sock").exists());
}

#[test]
fn confined_thread_may_remove_only_beneath_its_socket_directory() {
    if landlock_abi() < 6 {
        skip("needs Landlock ABI 6");
        return;
    }
    let socket_dir = TempDir::new();
    let elsewhere = TempDir::new();
    std::fs::write(socket_dir.join("relay.sock"), "").unwrap();
    std::fs::write(elsewhere.join("keep.txt"), "").unwrap();
    let policy = policy(&[&socket_dir.arg("relay.sock"), "@backend"]);
    assert!(
        !policy.scope_abstract_unix,
        "an abstract CONNECT stays reachable"
    );
    let (mine, other) = (socket_dir.join("relay.sock"), elsewhere.join("keep.txt"));
    let (removed, kept) = std::thread::spawn(move || {
        sandbox::apply(&policy).expect("apply");
        (std::fs::remove_file(&mine), std::fs::remove_file(&other))
    })
    .join()
    .unwrap();
    assert!(removed.is_ok(), "{removed:?}");
    assert_eq!(errno(kept), Some(libc::EACCES));
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
    strict.env(sandbox::ABI_MAX_VARIABLE, "5");
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
    best_effort.env(sandbox::ABI_MAX_VARIABLE, "5");
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
