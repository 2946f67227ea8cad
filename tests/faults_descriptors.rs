//! Faults: descriptors (and the kernel memory behind them) running out.
//!
//! A relay short of descriptors must never abort a connection it has
//! established, nor starve the clients it has accepted: it accepts only what
//! it can serve, lets the rest wait in the listen backlog, retries, and falls
//! back from splicing through a pipe to copying through a buffer.
//!
//! One test runs the relay under a real `RLIMIT_NOFILE` with many clients at
//! once; the others inject each of EMFILE, ENFILE, ENOBUFS and ENOMEM with
//! `strace -e inject=` into the three calls that allocate a descriptor:
//! `accept4` (a client), `socket` (the connection to CONNECT) and `pipe2`
//! (the zero-copy data path).
//!
//! Injection counts calls per system call and per thread; the relay makes
//! them all on its one runtime thread. Numbering, as `strace -f -e
//! trace=socket,accept4,pipe2` shows it for `127.0.0.1:0 127.0.0.1:PORT`:
//! `socket` #1 is the listener (none for an inherited `fd:3`), `socket` #2 is
//! the first client's connection to CONNECT; `accept4` #1 is the accept
//! loop's first try (`EAGAIN` when nobody waits); there is no `pipe2` before
//! the first client's bytes.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// The four ways a call that needs a descriptor or kernel memory fails.
const SHORTAGES: [(&str, i32); 4] = [
    ("EMFILE", libc::EMFILE),
    ("ENFILE", libc::ENFILE),
    ("ENOBUFS", libc::ENOBUFS),
    ("ENOMEM", libc::ENOMEM),
];

// --- helpers ---------------------------------------------------------------

/// Sends `data` and half-closes while reading everything that comes back;
/// returns the digest of what came back before a clean EOF, or what went
/// wrong (a reset, a timeout, a failed write) and after how many bytes.
fn round_trip(address: &str, data: Arc<Vec<u8>>, read_timeout: Duration) -> Result<Digest, String> {
    let stream = TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
    round_trip_on(stream, data, read_timeout)
}

/// [`round_trip`] on a connection already made.
fn round_trip_on(
    stream: TcpStream,
    data: Arc<Vec<u8>>,
    read_timeout: Duration,
) -> Result<Digest, String> {
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || -> io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut got = Digest::new();
    let mut buffer = vec![0u8; 65536];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => got = got.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Unblocks the writer if the relay stopped reading.
                let _ = reader.shutdown(Shutdown::Both);
                return Err(format!("read failed after {} bytes: {e}", got.len));
            }
        }
    }
    match sender.join().unwrap() {
        Ok(()) => Ok(got),
        Err(e) => Err(format!("write failed (read {} bytes): {e}", got.len)),
    }
}

/// Checks that an echo of `data` came back whole.
fn check_echo(outcome: Result<Digest, String>, data: &[u8]) -> Result<(), String> {
    let got = outcome?;
    let want = Digest::new().update(data);
    if got.len != want.len {
        Err(format!("short read: {} of {} bytes", got.len, want.len))
    } else if got.hash != want.hash {
        Err(format!(
            "{} bytes came back, but not the bytes sent",
            got.len
        ))
    } else {
        Ok(())
    }
}

/// The C library's text for an errno value, as the relay's messages quote
/// it (`Too many open files` for EMFILE).
fn strerror(code: i32) -> String {
    let text = io::Error::from_raw_os_error(code).to_string();
    text.split(" (os error").next().unwrap().to_string()
}

/// Whether `count` log lines containing `needle` have come within `span`.
fn logged_within(relay: &Relay, needle: &str, count: usize, span: Duration) -> bool {
    let deadline = Instant::now() + span;
    loop {
        if relay.count_lines(needle) >= count {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// What `-v` logs for a connection that moved 1 MB each way to its end.
const MIB_EACH_WAY: &str = "1048576 bytes up, 1048576 bytes down";

/// Lines of the log that show a client being given up on: none may appear
/// while descriptors run short.
fn casualties(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("no connection within")
                || l.contains("cannot connect")
                || l.contains("aborted")
        })
        .collect()
}

/// Whether strace can run here (root: ptrace and a PID namespace for it).
fn can_inject() -> bool {
    if !is_root() {
        skip("fault injection needs root (ptrace, a PID namespace)");
        return false;
    }
    for tool in ["strace", "unshare"] {
        let works = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !works {
            skip(&format!("{tool} is not installed"));
            return false;
        }
    }
    true
}

/// The relay under `strace -e inject=SYSCALL:error=ERROR:when=WHEN`.
struct Injected {
    relay: Relay,
    trace: PathBuf,
    _dir: TempDir,
}

impl Injected {
    /// Starts the relay with `args` (and `fds` as descriptors 3, …) under
    /// strace, which fails `syscall` with `error` on the calls `when`
    /// numbers, and waits for its `listening on` line.
    ///
    /// strace runs as the first process of a PID namespace of its own, so
    /// that killing it (the harness kills the command on drop, even when
    /// start-up fails) takes the relay along: a tracee outlives its tracer
    /// otherwise. The trace of `syscall` goes to a file, to tell whether the
    /// faults were really injected.
    fn start(syscall: &str, error: &str, when: &str, args: &[&str], fds: &[i32]) -> Injected {
        let dir = TempDir::new();
        let trace = dir.join("trace");
        let mut command = Command::new("unshare");
        command
            .args(["--pid", "--fork", "--kill-child", "--"])
            .args(["strace", "-f", "-qq", "-o"])
            .arg(&trace)
            .arg(format!("--trace={syscall}"))
            .arg(format!("--inject={syscall}:error={error}:when={when}"))
            .arg("--")
            .arg(relay_bin())
            .args(args)
            // Nothing that would add sockets of its own to the numbering.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        pass_fds(&mut command, fds);
        Injected {
            relay: Relay::start_command(command, 1),
            trace,
            _dir: dir,
        }
    }

    /// How many calls strace has failed so far.
    fn injected(&self) -> usize {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("(INJECTED)"))
            .count()
    }

    /// The trace so far, for failure messages.
    fn trace(&self) -> String {
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }

    /// Fails unless strace has failed `count` calls of `syscall` so far.
    fn check_injected(&self, count: usize, syscall: &str) -> Result<(), String> {
        if self.injected() != count {
            return Err(format!(
                "expected {count} injected {syscall} failures:\n{}",
                self.trace()
            ));
        }
        Ok(())
    }

    /// Checks that `data` from a new client comes back whole; the failure
    /// message carries the log.
    fn check_echoes(&self, data: Vec<u8>) -> Result<(), String> {
        let data = Arc::new(data);
        check_echo(
            round_trip(self.relay.address(), data.clone(), DEADLINE),
            &data,
        )
        .map_err(|e| format!("{e}\nlog:\n{}", self.relay.log()))
    }
}

/// Runs `case` once per shortage and fails with every shortage's outcome.
fn for_each_shortage(mut case: impl FnMut(&str, i32) -> Result<(), String>) {
    let failures: Vec<String> = SHORTAGES
        .iter()
        .filter_map(|&(name, code)| case(name, code).err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

// --- a real descriptor limit -----------------------------------------------

/// 40 clients at once, each echoing 1 MB through a relay that may hold 24
/// descriptors (room for a few connections with their pipes): the others
/// wait in the backlog and are served in turn, nobody is reset or cut
/// short, and no warning blames CONNECT.
///
/// The clients are all queued before the relay starts (it gets the
/// listener as `fd:3`), so they arrive as one burst, every time. Today the
/// relay accepts until it has no descriptor left for CONNECT and then
/// resets the accepted clients after `--connect-timeout` ("cannot connect
/// to …: no connection within 10s").
#[test]
fn forty_clients_through_24_descriptors_all_get_their_megabyte_back() {
    const CLIENTS: usize = 40;
    let backend = Backend::tcp(echo);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let data = Arc::new(payload(MIB, 1000 + i as u64));
            // The kernel completes the handshake: the client is queued.
            let stream = TcpStream::connect(&address).unwrap();
            thread::spawn(move || {
                let outcome = round_trip_on(stream, data.clone(), Duration::from_secs(45));
                check_echo(outcome, &data)
            })
        })
        .collect();
    let mut relay_command = command(&[
        "-v",
        "--connect-timeout",
        "10s",
        "fd:3",
        &backend.connect_arg,
    ]);
    // Passing first: it moves the descriptor above the limit on the way.
    pass_fds(&mut relay_command, &[listener.as_raw_fd()]);
    limit_open_files(&mut relay_command, 24);
    let mut relay = Relay::start_command(relay_command, 1);
    let started = Instant::now();
    let failures: Vec<String> = clients
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| c.join().unwrap().err().map(|e| format!("client {i}: {e}")))
        .collect();
    eprintln!("{CLIENTS} clients done in {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed:\n{}\nlog:\n{}",
        failures.len(),
        failures.join("\n"),
        relay.log()
    );
    assert!(relay.running(), "the relay stays up; log:\n{}", relay.log());
    assert!(
        logged_within(&relay, MIB_EACH_WAY, CLIENTS, Duration::from_secs(5)),
        "one line per connection, with every byte counted; log:\n{}",
        relay.log()
    );
    let log = relay.log();
    let given_up = casualties(&log);
    assert!(given_up.is_empty(), "clients given up on:\n{given_up:#?}");
}

// --- accept4 ---------------------------------------------------------------

/// accept4 failing three times with each shortage while a client waits in
/// the backlog: the relay logs a warning naming the error, tries again, and
/// serves the client, bytes intact.
///
/// Today's relay already passes this (it logs "accept failed: …; retrying"
/// and retries after a pause); the test guards that a fix for the other
/// faults keeps it so.
#[test]
fn accept4_failing_for_want_of_descriptors_or_memory_delays_the_waiting_client() {
    if !can_inject() {
        return;
    }
    let backend = Backend::tcp(echo);
    for_each_shortage(|name, code| {
        // The listener is ours and the client queued on it before the
        // relay starts: it is surely waiting when accept4 #1 fails.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let data = Arc::new(payload(200_000, code as u64));
        // The kernel completes the handshake: the client is in the backlog.
        let stream = TcpStream::connect(&address).unwrap();
        let client = {
            let data = data.clone();
            thread::spawn(move || round_trip_on(stream, data, DEADLINE))
        };
        let relay = Injected::start(
            "accept4",
            name,
            "1..3",
            &["fd:3", &backend.connect_arg],
            &[listener.as_raw_fd()],
        );
        check_echo(client.join().unwrap(), &data)
            .map_err(|e| format!("{e}\nlog:\n{}", relay.relay.log()))?;
        relay.check_injected(3, "accept4")?;
        let text = strerror(code);
        if !logged_within(&relay.relay, &text, 1, Duration::from_secs(2)) {
            return Err(format!(
                "no warning naming {text:?}; log:\n{}",
                relay.relay.log()
            ));
        }
        Ok(())
    });
}

// --- socket() for CONNECT --------------------------------------------------

/// socket() for CONNECT failing three times with each shortage (calls 2..4;
/// #1 is the listener): the accepted client waits, within
/// `--connect-timeout`, and is served once the error stops, bytes intact.
///
/// Today's relay passes for EMFILE and ENFILE (it retries those every
/// 50 ms) and closes the client at once for ENOBUFS and ENOMEM ("cannot
/// connect to …: No buffer space available; closing the client").
#[test]
fn socket_for_connect_failing_for_want_of_descriptors_or_memory_delays_the_client() {
    if !can_inject() {
        return;
    }
    let backend = Backend::tcp(echo);
    for_each_shortage(|name, code| {
        let relay = Injected::start(
            "socket",
            name,
            "2..4",
            &[
                "--connect-timeout",
                "10s",
                "127.0.0.1:0",
                &backend.connect_arg,
            ],
            &[],
        );
        relay.check_echoes(payload(200_000, 100 + code as u64))?;
        relay.check_injected(3, "socket")
    });
}

// --- pipe2 -----------------------------------------------------------------

/// pipe2 failing on every call with each shortage: the relay cannot splice
/// at all, copies through a buffer instead, and 1 MB each way comes
/// through intact, ending with a clean EOF, never an abort.
///
/// Today the first failed pipe2 aborts the connection: the client is reset
/// and the `-v` line says "aborted (Too many open files …)".
#[test]
fn pipe2_failing_for_want_of_descriptors_or_memory_falls_back_to_copying() {
    if !can_inject() {
        return;
    }
    let backend = Backend::tcp(echo);
    for_each_shortage(|name, code| {
        let mut relay = Injected::start(
            "pipe2",
            name,
            "1+",
            &["-v", "127.0.0.1:0", &backend.connect_arg],
            &[],
        );
        relay.check_echoes(payload(MIB, 200 + code as u64))?;
        if relay.injected() == 0 {
            return Err(format!("pipe2 was never called:\n{}", relay.trace()));
        }
        if !relay.relay.running() {
            return Err(format!("the relay exited; log:\n{}", relay.relay.log()));
        }
        if !logged_within(&relay.relay, MIB_EACH_WAY, 1, Duration::from_secs(5)) {
            return Err(format!(
                "no line for the connection with every byte counted; log:\n{}",
                relay.relay.log()
            ));
        }
        let log = relay.relay.log();
        let given_up = casualties(&log);
        if !given_up.is_empty() {
            return Err(format!("connections given up on:\n{given_up:#?}"));
        }
        Ok(())
    });
}
