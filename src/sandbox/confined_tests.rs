//! What a thread confined with the relay's own policy can still do.
//! These run in the test process: each test confines a thread of its own,
//! which ends with the test.

use std::net::{TcpListener, TcpStream};
use std::process::Command;

use super::*;

fn policy(args: &[&str]) -> Policy {
    Policy::derive(&crate::cli::config_for(args))
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique_name("sandbox-test"));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn arg(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique_name(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

fn landlock_abi() -> ABI {
    abi_here()
}

/// As tests/common's skip: a failure in CI, which must run everything.
fn skip(reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "would skip in CI, which must run every test: {reason}"
    );
    eprintln!("skipped: {reason}");
}

fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

#[test]
fn confined_thread_can_reach_connect_and_nothing_else() {
    if landlock_abi() < ABI::V6 {
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

    let mut policy = policy(&[&dir.arg("relay.sock"), &format!("127.0.0.1:{allowed_port}")]);
    // Landlock alone: the seccomp filter would end the test process at
    // the first forbidden call (src/seccomp.rs tests it on its own).
    policy.system_calls = None;
    let new_socket = dir.join("new.sock");
    let result = std::thread::spawn(move || {
        let report = apply(&policy).expect("apply");
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
    if landlock_abi() < ABI::V6 {
        skip("needs Landlock ABI 6");
        return;
    }
    let socket_dir = TempDir::new();
    let elsewhere = TempDir::new();
    std::fs::write(socket_dir.join("relay.sock"), "").unwrap();
    std::fs::write(elsewhere.join("keep.txt"), "").unwrap();
    let mut policy = policy(&[&socket_dir.arg("relay.sock"), "@backend"]);
    // Landlock alone: the seccomp filter would end the test process at
    // the first forbidden call (src/seccomp.rs tests it on its own).
    policy.system_calls = None;
    assert!(
        !policy.scope_abstract_unix,
        "an abstract CONNECT stays reachable"
    );
    let (mine, other) = (socket_dir.join("relay.sock"), elsewhere.join("keep.txt"));
    let (removed, kept) = std::thread::spawn(move || {
        apply(&policy).expect("apply");
        (std::fs::remove_file(&mine), std::fs::remove_file(&other))
    })
    .join()
    .unwrap();
    assert!(removed.is_ok(), "{removed:?}");
    assert_eq!(errno(kept), Some(libc::EACCES));
}
