//! Test harness: spawn the real relay binary, read its log lines, and talk to
//! it over real sockets. Every wait is on a readiness signal (a log line, a
//! connection, an exit) with a generous deadline, never a bare sleep.
//!
//! - this module: the relay process and its log;
//! - [`net`]: clients, backends and their handlers;
//! - [`data`]: payloads and digests;
//! - [`system`]: how the relay's process is set up (inherited descriptors,
//!   limits, umask, a private `/etc/hosts`) and what the tests ask the
//!   kernel and the machine about it (root, tools, groups);
//! - [`notify`]: the service manager's end of `NOTIFY_SOCKET`; [`store`]: the
//!   service manager with its file descriptor store, as systemd keeps it;
//! - [`container`]: the isolation systemd gives a service, by hand (a
//!   network namespace) and for real (systemd as PID 1 in `systemd-nspawn`);
//!   [`nspawn`]: such a container with the README's units installed.

#![allow(dead_code)] // each test binary uses a different subset

mod container;
mod data;
mod net;
mod notify;
mod nspawn;
mod store;
mod system;

// Each test binary uses a different subset, some none of a module.
#[allow(unused_imports)]
pub use {container::*, data::*, net::*, notify::*, nspawn::*, store::*, system::*};

/// The signals [`signal`] sends.
pub use rustix::process::Signal;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_simpletcpunixrelay"))
}

/// The unit templates.
pub fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

/// A running relay process. Killed on drop if it is still running.
pub struct Relay {
    pub child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// The addresses from the `listening on ADDR` lines, in order.
    pub addresses: Vec<String>,
}

impl Relay {
    /// Starts the relay with `args` and waits for one `listening on` line.
    pub fn start(args: &[&str]) -> Relay {
        Relay::start_command(command(args), 1)
    }

    /// Starts a prepared command and waits for `listeners` `listening on` lines.
    pub fn start_command(mut command: Command, listeners: usize) -> Relay {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn relay");
        let stderr = child.stderr.take().expect("stderr piped");
        Relay::attach(child, stderr, listeners)
    }

    /// Starts a prepared command with standard error connected to a pipe that
    /// `JOURNAL_STREAM` names, as systemd does when it is the journal.
    pub fn start_journal(mut command: Command, listeners: usize) -> Relay {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let (device, inode) = device_and_inode(writer.as_raw_fd());
        command
            .env("JOURNAL_STREAM", format!("{device}:{inode}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(writer));
        let child = command.spawn().expect("spawn relay");
        // Our copy of the write end goes with the command, so the log ends
        // when the relay exits.
        drop(command);
        Relay::attach(child, reader, listeners)
    }

    fn attach(child: Child, stderr: impl Read + Send + 'static, listeners: usize) -> Relay {
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_writer = log.clone();
        // Tag echoed lines with the test's name: tests run in parallel.
        let test = thread::current().name().unwrap_or("relay").to_string();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{test}] {line}");
                log_writer.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut relay = Relay {
            child,
            lines,
            log,
            addresses: Vec::new(),
        };
        while relay.addresses.len() < listeners {
            let line = relay.wait_for_line("listening on ");
            let address = line.split("listening on ").nth(1).unwrap();
            relay
                .addresses
                .push(address.split(' ').next().unwrap().to_string());
        }
        relay
    }

    /// The first listening address.
    pub fn address(&self) -> &str {
        &self.addresses[0]
    }

    /// The TCP port of the first listener.
    pub fn port(&self) -> u16 {
        port_of(self.address())
    }

    /// The relay's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a log line containing `needle` and returns it. Lines seen
    /// before are not searched again: call in the order they are expected.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no log line containing {needle:?} within {DEADLINE:?}; log:\n{}",
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "relay exited before logging {needle:?}; log:\n{}",
                        self.log()
                    )
                }
            }
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How many lines logged so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Sends a signal to the relay (our own child, not reaped yet, so the pid
    /// is still its own).
    pub fn signal(&self, signal: Signal) {
        system::signal(self.pid(), signal).unwrap();
    }

    /// Whether the relay is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `limit` for the relay to exit.
    pub fn wait_exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }

    /// Waits for the relay to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, DEADLINE)
            .unwrap_or_else(|| panic!("relay did not exit; log:\n{}", self.log()))
    }

    /// Waits for the end of the log (the relay exited) and returns it whole.
    pub fn finish(&mut self) -> (ExitStatus, String) {
        let status = self.wait_exit();
        // Drain the reader thread: the channel closes at EOF.
        let deadline = Instant::now() + DEADLINE;
        while self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        (status, self.log())
    }

    /// The relay's resident memory in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn vm_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS line");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of a printed TCP address (`127.0.0.1:80`, `[::1]:80`).
pub fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .expect("a TCP address")
}

/// A command running the relay binary with `args`.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(relay_bin());
    command.args(args);
    command
}

/// What a relay that ran to completion left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The non-empty lines of standard error.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs a prepared relay command to completion (for start-up failures,
/// `--help`, `--version`).
pub fn run_command(command: Command) -> Finished {
    run_command_with_stdin(command, Stdio::null())
}

/// Like [`run_command`], with standard input from `stdin` (a file, for
/// `fd:0` on something that is not a socket).
pub fn run_command_with_stdin(command: Command, stdin: Stdio) -> Finished {
    let (exited, finished) = run_within_deadline(command, stdin);
    assert!(
        exited,
        "the relay should exit on its own; stderr:\n{}",
        finished.stderr
    );
    finished
}

/// Runs a tool (`systemd-analyze`, a script, `nsenter …`) to completion.
/// One that still runs after [`DEADLINE`] is killed, and its status says so.
pub fn run_tool(command: Command) -> Finished {
    run_within_deadline(command, Stdio::null()).1
}

/// Runs `command` with standard input from `stdin` until it exits, or kills
/// it after [`DEADLINE`]; says whether it exited by itself.
fn run_within_deadline(mut command: Command, stdin: Stdio) -> (bool, Finished) {
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
    drop(command); // descriptors it passed to the child are the child's alone now
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let exited = wait_exit(&mut child, DEADLINE);
    let status = match exited {
        Some(status) => status,
        None => {
            let _ = child.kill();
            child.wait().expect("wait for the killed child")
        }
    };
    let stderr = stderr.join().unwrap();
    let finished = Finished {
        status,
        stdout: stdout.join().unwrap(),
        stderr,
    };
    (exited.is_some(), finished)
}

/// Runs the relay to completion: exit status and standard error.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let finished = run_command(command(args));
    (finished.status, finished.stderr)
}

/// Polls a child for exit until `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed (and reaped) when the test ends, however it ends:
/// for processes that are not the relay under [`Relay`] (a namespace's
/// keeper, a relay whose standard error goes to a file).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `condition` until it holds; panics naming `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call, for abstract sockets.
pub fn unique_name(tag: &str) -> String {
    format!(
        "stur-test-{}-{}-{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a directory under the system's temporary directory, named
    /// uniquely for this process and call.
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique_name("dir"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// The path of `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The path of `name` inside the directory, as a command-line argument.
    pub fn arg(&self, name: &str) -> String {
        self.join(name).to_str().unwrap().to_string()
    }

    /// The names of the entries in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh [`TempDir`] that anyone may traverse (mode 0755), for a socket or
/// a program that other users reach.
pub fn open_dir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Reports that a test cannot run here and why. Returns normally (the test
/// then returns early) except in CI (`CI` set), which runs as root with every
/// tool installed: there a skip means a missing install step, and fails.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("would skip in CI, which must run every test: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Skips the test (see [`skip`]) if one of `tools` is not installed, naming
/// the Debian `packages` that hold them; returns whether it did.
pub fn skip_if_missing(tools: &[&'static str], packages: &str) -> bool {
    let missing = missing_tool(tools);
    if let Some(tool) = missing {
        skip(&format!(
            "{tool} is not installed (apt-get install {packages})"
        ));
    }
    missing.is_some()
}
