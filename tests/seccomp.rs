//! The system call allowlist, proven from outside: `Seccomp: 2` for every
//! thread of the relay and of its resolver helper, a forbidden call ending
//! the process with a line that names it (debug builds honour a variable
//! that makes a confined thread try one), log-only mode, and the modes of
//! `--sandbox`. (What a confined thread can and cannot call is tested in
//! src/seccomp.rs; the rest of the suite runs with the filter on.)

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;

/// `(task, Seccomp field)` of every thread of `pid`.
fn seccomp_of_threads(pid: i32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue; // a thread that just ended
        };
        let field = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("missing")
            .trim()
            .to_string();
        threads.push((task.display().to_string(), field));
    }
    threads
}

fn assert_filtered(pid: i32, what: &str, threads_at_least: usize) {
    let threads = seccomp_of_threads(pid);
    assert!(
        threads.len() >= threads_at_least,
        "{what}: {threads_at_least} threads or more: {threads:?}"
    );
    for (task, field) in &threads {
        assert_eq!(field, "2", "{what}: {task} is not in filter mode");
    }
}

/// The start-up line containing `needle` (logged before `listening on`).
fn sandbox_line(relay: &Relay, needle: &str) -> String {
    let log = relay.log();
    log.lines()
        .find(|l| l.contains(needle) && !l.contains("resolver sandbox"))
        .unwrap_or_else(|| panic!("no {needle:?} line in:\n{log}"))
        .to_string()
}

/// The children of `pid` (its resolver helper).
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The relay with `env`, started and watched until a line of its standard
/// error contains `needle` (or it exits); the lines so far, and whether
/// the needle was seen. The relay is killed afterwards.
fn run_until_line(args: &[&str], env: &[(&str, &str)], needle: &str) -> (String, bool) {
    let mut command = command(args);
    command.envs(env.iter().copied());
    command.stdin(Stdio::null()).stdout(Stdio::null());
    command.stderr(Stdio::piped());
    let mut child = ChildGuard(command.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let found = line.contains(needle);
        log.push(line);
        if found {
            return (log.join("\n"), true);
        }
    }
    (log.join("\n"), false)
}

#[test]
fn every_thread_of_the_relay_and_of_its_resolver_runs_under_the_filter() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let target = format!("localhost:{}", port_of(&backend.connect_arg));
    let relay = Relay::start(&["-v", &dir.arg("s.sock"), &target]);
    // A host name: the helper resolves it, on a thread of its own.
    assert_eq!(
        exchange(connect(relay.address()), b"ping".to_vec()),
        b"ping"
    );
    let line = sandbox_line(&relay, "sandbox: landlock");
    assert!(
        line.contains("; seccomp: ") && line.contains(" system calls allowed"),
        "{line}"
    );
    let resolver_line = relay.log();
    let resolver_line = resolver_line
        .lines()
        .find(|l| l.contains("resolver sandbox: "))
        .unwrap_or_else(|| panic!("no resolver sandbox line:\n{resolver_line}"));
    assert!(
        resolver_line.contains(" system calls allowed"),
        "{resolver_line}"
    );
    // The engine, the reactor, the executor's threads and the main one.
    assert_filtered(relay.pid(), "relay", 3);
    let helpers = children(relay.pid());
    assert_eq!(helpers.len(), 1, "one resolver helper: {helpers:?}");
    assert_filtered(helpers[0], "resolver helper", 1);
}

#[test]
fn best_effort_installs_the_filter_and_sandbox_off_does_not() {
    let backend = Backend::tcp(echo);
    let relay = Relay::start(&["127.0.0.1:0", &backend.connect_arg]);
    assert_eq!(exchange(connect(relay.address()), b"on".to_vec()), b"on");
    assert_filtered(relay.pid(), "best-effort relay", 3);
    let relay = Relay::start(&["--sandbox", "off", "127.0.0.1:0", &backend.connect_arg]);
    assert_eq!(exchange(connect(relay.address()), b"off".to_vec()), b"off");
    for (task, field) in seccomp_of_threads(relay.pid()) {
        assert_eq!(field, "0", "{task}");
    }
}

/// The line naming `call`.
fn forbidden(call: &str, nr: libc::c_long) -> String {
    format!("error: forbidden system call {call} ({nr})")
}

#[cfg(debug_assertions)]
#[test]
fn a_forbidden_call_ends_the_relay_with_a_line_naming_it() {
    let backend = Backend::tcp(echo);
    for (call, nr) in [("execve", libc::SYS_execve), ("bind", libc::SYS_bind)] {
        let mut relay = command(&["127.0.0.1:0", &backend.connect_arg]);
        relay.env("SIMPLETCPUNIXRELAY_SECCOMP_TEST_CALL", call);
        let finished = run_command(relay);
        assert_eq!(
            finished.status.code(),
            Some(159),
            "128 + SIGSYS: {}",
            finished.stderr
        );
        let lines: Vec<&str> = finished
            .stderr_lines()
            .into_iter()
            .filter(|l| l.contains("forbidden system call"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", finished.stderr);
        assert!(
            lines[0].contains(&format!("simpletcpunixrelay: {}", forbidden(call, nr))),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("SIMPLETCPUNIXRELAY_SECCOMP=log"),
            "{}",
            lines[0]
        );
    }
}

#[cfg(debug_assertions)]
#[test]
fn under_the_journal_the_line_has_error_priority() {
    let backend = Backend::tcp(echo);
    let (mut reader, writer) = std::io::pipe().unwrap();
    let (device, inode) = device_and_inode(writer.as_raw_fd());
    let mut relay = command(&["127.0.0.1:0", &backend.connect_arg]);
    relay
        .env("SIMPLETCPUNIXRELAY_SECCOMP_TEST_CALL", "execve")
        .env("JOURNAL_STREAM", format!("{device}:{inode}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer));
    let mut child = ChildGuard(relay.spawn().unwrap());
    drop(relay);
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut log);
        log
    });
    let status = wait_exit(&mut child.0, DEADLINE);
    if status.is_none() {
        let _ = child.0.kill();
        let _ = child.0.wait();
    }
    let log = log.join().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(159), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("forbidden system call"))
        .unwrap_or_else(|| panic!("no line naming the call:\n{log}"));
    assert!(
        line.starts_with(&format!(
            "<3>simpletcpunixrelay: {}",
            forbidden("execve", libc::SYS_execve)
        )),
        "{line}"
    );
}

#[cfg(debug_assertions)]
#[test]
fn a_forbidden_call_in_the_resolver_helper_is_named_too() {
    let backend = Backend::tcp(echo);
    let target = format!("localhost:{}", port_of(&backend.connect_arg));
    let needle = format!(
        "simpletcpunixrelay: error: resolver: forbidden system call bind ({})",
        libc::SYS_bind
    );
    let (log, seen) = run_until_line(
        &["127.0.0.1:0", &target],
        &[("SIMPLETCPUNIXRELAY_SECCOMP_TEST_CALL", "resolver:bind")],
        &needle,
    );
    assert!(seen, "no line {needle:?} in:\n{log}");
}

#[cfg(debug_assertions)]
#[test]
fn log_only_mode_lets_the_call_through_and_the_kernel_logs_it() {
    let backend = Backend::tcp(echo);
    let mut command = command(&["127.0.0.1:0", &backend.connect_arg]);
    command
        .env("SIMPLETCPUNIXRELAY_SECCOMP", "log")
        .env("SIMPLETCPUNIXRELAY_SECCOMP_TEST_CALL", "execve");
    let mut relay = Relay::start_command(command, 1);
    let line = sandbox_line(&relay, "sandbox: ");
    assert!(line.contains("warning: "), "{line}");
    assert!(
        line.contains(
            "others logged by the kernel and let through (SIMPLETCPUNIXRELAY_SECCOMP=log)"
        ),
        "{line}"
    );
    assert_filtered(relay.pid(), "relay", 3);
    // The call went through (and failed: null arguments); the relay goes on.
    assert_eq!(exchange(connect(relay.address()), b"log".to_vec()), b"log");
    assert!(relay.running());
    assert!(
        !relay.log().contains("forbidden system call"),
        "{}",
        relay.log()
    );
    // The kernel's record: type=1326 (AUDIT_SECCOMP) with the call's number.
    let logged =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_logged").unwrap_or_default();
    let dmesg = Command::new("dmesg")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(dmesg) = dmesg else {
        skip("dmesg cannot be read here");
        return;
    };
    if !logged.split_whitespace().any(|a| a == "log") {
        skip("kernel.seccomp.actions_logged lacks \"log\"");
        return;
    }
    let record = format!("pid={} ", relay.pid());
    let syscall = format!(" syscall={} ", libc::SYS_execve);
    let mut text = String::from_utf8_lossy(&dmesg.stdout).into_owned();
    wait_until("the kernel's record of the call", || {
        if let Ok(out) = Command::new("dmesg").output() {
            text = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        text.lines()
            .any(|l| l.contains("type=1326") && l.contains(&record) && l.contains(&syscall))
    });
}

#[test]
fn strict_requires_the_filter_and_refuses_log_only_mode() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut strict = command(&[
        "--sandbox",
        "strict",
        &dir.arg("s.sock"),
        &backend.connect_arg,
    ]);
    strict.env("SIMPLETCPUNIXRELAY_SECCOMP", "log");
    let finished = run_command(strict);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("--sandbox strict: cannot enforce")
            && finished
                .stderr
                .contains("seccomp filter (log only: SIMPLETCPUNIXRELAY_SECCOMP=log)"),
        "{}",
        finished.stderr
    );
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}

#[test]
fn an_unknown_mode_is_refused_rather_than_ignored() {
    let dir = TempDir::new();
    let backend = Backend::tcp(echo);
    let mut relay = command(&[&dir.arg("s.sock"), &backend.connect_arg]);
    relay.env("SIMPLETCPUNIXRELAY_SECCOMP", "off");
    let finished = run_command(relay);
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("SIMPLETCPUNIXRELAY_SECCOMP=off: unknown value"),
        "{}",
        finished.stderr
    );
}

/// A stop (a debugger or strace attaching, SIGSTOP and SIGCONT) makes a
/// thread sleeping with a timeout go on through `restart_syscall`: the
/// filter lets it, so tracing the relay never ends it. The relay is pinned
/// to one CPU, where its threads are found in such sleeps.
#[test]
fn a_tracer_attaching_and_leaving_does_not_end_the_relay() {
    if skip_if_missing(&["strace"], "strace") {
        return;
    }
    let backend = Backend::tcp(echo);
    let mut command = command(&["127.0.0.1:0", &backend.connect_arg]);
    // SAFETY: sched_setaffinity is async-signal-safe and reads one set.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
    let mut relay = Relay::start_command(command, 1);
    for round in 0..3 {
        let mut tracer = Command::new(tool("strace").unwrap())
            .args([
                "-f",
                "-q",
                "-o",
                "/dev/null",
                "-p",
                &relay.pid().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let tracer_pid = tracer.id().to_string();
        wait_until("strace to attach to every thread", || {
            seccomp_of_threads(relay.pid()).iter().all(|(task, _)| {
                std::fs::read_to_string(format!("{task}/status"))
                    .is_ok_and(|s| s.lines().any(|l| l == format!("TracerPid:\t{tracer_pid}")))
            }) || !relay.running()
        });
        assert_eq!(
            exchange(connect(relay.address()), b"traced".to_vec()),
            b"traced"
        );
        // Our own child.
        let _ = signal(tracer.id() as i32, Signal::INT);
        let _ = tracer.wait();
        assert!(
            relay.running(),
            "round {round}: the relay ended:\n{}",
            relay.log()
        );
        assert_eq!(
            exchange(connect(relay.address()), b"after".to_vec()),
            b"after"
        );
    }
}
