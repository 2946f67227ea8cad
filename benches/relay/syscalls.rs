//! System calls per round trip (issue 14): `strace -f -c -q` attached to a
//! relay's processes while one connection makes ping-pongs through it.
//!
//! The connection is opened and warmed up before strace attaches, and
//! closed only after strace has detached, so that what is counted is the
//! steady state of one relayed connection, not its set-up or teardown.
//! strace attaches to every process of the relay's tree as it stands then
//! (for socat: the listener and the child it forked for this connection)
//! and, with `-f`, to all their threads and to anything they fork later.
//!
//! Tracing slows every call many times over, so these runs are separate
//! from the latency runs: only the counts are taken from them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::client::{self, Addr};

pub const INSTALL_HINT: &str = "apt-get install strace";

/// Round trips made before strace attaches.
pub const WARM_UP: usize = 100;

/// How strace was run, or why not.
#[derive(Default)]
pub struct Run {
    /// `strace -V`'s first line.
    pub version: String,
    pub skipped: Option<String>,
}

/// One line of strace's summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Calls {
    pub calls: u64,
    /// Calls that returned an error (strace does not say which; on the
    /// relays' non-blocking descriptors, EAGAIN).
    pub errors: u64,
}

/// What strace counted over `round_trips` round trips.
#[derive(Debug, Default)]
pub struct Count {
    pub round_trips: usize,
    /// Processes and threads strace was attached to at the start.
    pub processes: usize,
    pub threads: usize,
    pub by_syscall: BTreeMap<String, Calls>,
}

impl Count {
    pub fn total(&self) -> Calls {
        self.by_syscall
            .values()
            .fold(Calls::default(), |sum, c| Calls {
                calls: sum.calls + c.calls,
                errors: sum.errors + c.errors,
            })
    }

    pub fn per_round_trip(&self, calls: u64) -> f64 {
        calls as f64 / self.round_trips.max(1) as f64
    }

    /// System calls per round trip.
    pub fn total_per_round_trip(&self) -> f64 {
        self.per_round_trip(self.total().calls)
    }

    /// The system calls made at least `min` times per round trip, most
    /// frequent first.
    pub fn top(&self, min: f64) -> Vec<(&str, Calls)> {
        let mut top: Vec<(&str, Calls)> = self
            .by_syscall
            .iter()
            .filter(|(_, c)| self.per_round_trip(c.calls) >= min)
            .map(|(name, c)| (name.as_str(), *c))
            .collect();
        top.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
        top
    }

    /// "splice 7.1 (3.1 failed), epoll_ctl 3.1, …" per round trip.
    pub fn describe(&self, min: f64) -> String {
        let top: Vec<String> = self
            .top(min)
            .into_iter()
            .map(|(name, c)| {
                let calls = self.per_round_trip(c.calls);
                if c.errors > 0 {
                    let errors = self.per_round_trip(c.errors);
                    format!("{name} {calls:.1} ({errors:.1} failed)")
                } else {
                    format!("{name} {calls:.1}")
                }
            })
            .collect();
        if top.is_empty() {
            "–".into()
        } else {
            top.join(", ")
        }
    }
}

/// The strace program.
pub struct Strace {
    path: PathBuf,
}

impl Strace {
    pub fn find() -> Option<Strace> {
        crate::peers::find_in_path("strace").map(|path| Strace { path })
    }

    pub fn version(&self) -> String {
        crate::peers::first_line_of(&self.path, "-V")
    }

    /// Attaches to every process in `pids` (with all their threads and
    /// later forks), summary to `out`; returns once every thread is traced.
    fn attach(&self, pids: &[u32], out: &Path) -> io::Result<Tracer> {
        let errors = out.with_extension("err");
        let mut command = Command::new(&self.path);
        command.args(["-f", "-c", "-q", "-o"]).arg(out);
        for pid in pids {
            command.arg("-p").arg(pid.to_string());
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&errors)?);
        crate::peers::prepare(&mut command, None, None);
        let child = command.spawn()?;
        let mut tracer = Tracer {
            child,
            out: out.to_path_buf(),
            errors,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = tracer.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "strace exited ({status}): {}",
                    tracer.stderr()
                )));
            }
            if traced_by(pids, tracer.child.id()) {
                return Ok(tracer);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "strace did not attach within 10 s: {}",
                    tracer.stderr()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether every live thread of every process in `pids` is traced by
/// `tracer` (processes that have exited meanwhile are not waited for).
fn traced_by(pids: &[u32], tracer: u32) -> bool {
    let wanted = tracer.to_string();
    pids.iter().all(|pid| {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        tasks.flatten().all(|task| {
            let Ok(status) = fs::read_to_string(task.path().join("status")) else {
                return true;
            };
            status
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|t| t.trim() == wanted)
        })
    })
}

/// Live threads of the processes in `pids`.
fn threads(pids: &[u32]) -> usize {
    pids.iter()
        .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/task")).ok())
        .map(|tasks| tasks.count())
        .sum()
}

/// A running strace.
struct Tracer {
    child: Child,
    out: PathBuf,
    errors: PathBuf,
}

impl Tracer {
    fn stderr(&self) -> String {
        fs::read_to_string(&self.errors)
            .unwrap_or_default()
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Detaches (SIGINT, as at a terminal), waits for strace to write its
    /// summary and exit, and reads the summary.
    fn finish(mut self) -> io::Result<BTreeMap<String, Calls>> {
        // SAFETY: kill takes a process id and a signal number; strace is
        // our child and has not been waited for yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "strace did not exit within 10 s of SIGINT: {}",
                    self.stderr()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = fs::read_to_string(&self.out)?;
        let counts = parse(&text)?;
        if counts.is_empty() {
            return Err(io::Error::other(format!(
                "strace counted no system calls: {}",
                self.stderr()
            )));
        }
        Ok(counts)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the table of `strace -c`:
///
/// ```text
/// % time     seconds  usecs/call     calls    errors syscall
/// ------ ----------- ----------- --------- --------- ----------------
///  61.43    0.012404           3      3402      1201 splice
///   ...
/// ------ ----------- ----------- --------- --------- ----------------
/// 100.00    0.020193           2      8231      1201 total
/// ```
///
/// The errors column is blank where a call never failed. Only the first
/// table is read (strace prints one per personality; the relays have one).
pub fn parse(text: &str) -> io::Result<BTreeMap<String, Calls>> {
    let mut counts = BTreeMap::new();
    let mut rules = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("------") {
            rules += 1;
            continue;
        }
        if rules != 1 || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = || io::Error::other(format!("unexpected line in strace's summary: {line:?}"));
        let (name, numbers) = fields.split_last().ok_or_else(bad)?;
        let number = |i: usize| -> io::Result<u64> {
            numbers.get(i).and_then(|n| n.parse().ok()).ok_or_else(bad)
        };
        let calls = match numbers.len() {
            4 => Calls {
                calls: number(3)?,
                errors: 0,
            },
            5 => Calls {
                calls: number(3)?,
                errors: number(4)?,
            },
            _ => return Err(bad()),
        };
        let entry: &mut Calls = counts.entry(name.to_string()).or_default();
        entry.calls += calls.calls;
        entry.errors += calls.errors;
    }
    Ok(counts)
}

/// Why a count failed.
pub enum Failure {
    /// The ping-pongs through the relay failed: the relay is broken.
    Client(io::Error),
    /// strace could not attach, detach or be read: the machine's problem
    /// (as a missing peer is), not the relay's.
    Trace(io::Error),
}

/// Counts the system calls of the relay `pid` (its whole process tree)
/// over `round_trips` ping-pongs of `size` bytes through `addr`, from a
/// client thread pinned to `cpu` if given. strace is started from the
/// calling thread (see `peers::prepare`); `out` is its summary file.
pub fn count(
    strace: &Strace,
    addr: &Addr,
    pid: u32,
    round_trips: usize,
    size: usize,
    cpu: Option<usize>,
    out: &Path,
) -> Result<Count, Failure> {
    // The client says when its connection is warm and when its round
    // trips are done; it is told when to start them and when to close.
    let (said, heard) = mpsc::channel::<()>();
    let (tell, told) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let client = scope.spawn(move || -> io::Result<()> {
            if let Some(cpu) = cpu {
                client::pin_this_thread(cpu)?;
            }
            let mut connection = client::PingPong::open(addr, size)?;
            for _ in 0..WARM_UP {
                connection.round_trip()?;
            }
            let _ = said.send(());
            if told.recv().is_err() {
                return Ok(());
            }
            for _ in 0..round_trips {
                connection.round_trip()?;
            }
            let _ = said.send(());
            // Closed only once strace has detached.
            let _ = told.recv();
            Ok(())
        });
        // None: the client stopped, with its own error.
        let traced = (|| -> io::Result<Option<Count>> {
            if heard.recv().is_err() {
                return Ok(None);
            }
            let pids = crate::procfs::tree(pid);
            let threads = threads(&pids);
            let tracer = strace.attach(&pids, out)?;
            let _ = tell.send(());
            if heard.recv().is_err() {
                return Ok(None);
            }
            let by_syscall = tracer.finish()?;
            Ok(Some(Count {
                round_trips,
                processes: pids.len(),
                threads,
                by_syscall,
            }))
        })();
        drop(tell);
        let client = client
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the client thread panicked")));
        match (traced, client) {
            (Ok(Some(count)), Ok(())) => Ok(count),
            (_, Err(e)) => Err(Failure::Client(e)),
            (Err(e), Ok(())) => Err(Failure::Trace(e)),
            (Ok(None), Ok(())) => Err(Failure::Client(io::Error::other(
                "the client stopped early",
            ))),
        }
    })
}
