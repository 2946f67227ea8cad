//! What a hand-over restart costs the clients (issue 12): the longest pause a
//! ping-pong client sees while the relay hands its connections to the next
//! instance, with 1 and with 1000 open connections.
//!
//! The benchmark plays systemd's part, as `tests/restart.rs` does: its own
//! notification socket keeps what the relay stores (`FDSTORE=1`), drops
//! what it removes (`FDSTOREREMOVE=1`), closes the `BARRIER=1` descriptor,
//! and starts the next instance at once with the store passed back
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`). Under systemd, `RestartSec=` (0 in the
//! templates) and systemd's own start-up add to the pause.
//!
//! One ping-pong client sends 64-byte messages through the relay to the
//! backend's echo and checks every answer; the other connections are held
//! open (each made one exchange first, so that it is relayed) and checked
//! again afterwards. Figures: the longest round trip across the hand-over
//! (the pause), the time from SIGUSR2 to the next instance's `READY=1`, the
//! median round trip before, and bytes lost (answers that did not match).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::Settings;
use crate::backend::Backend;
use crate::client::{Addr, PingPong};

/// Bytes per ping-pong message.
const MESSAGE: usize = 64;
/// Round trips before the hand-over, and at least as many after it.
const ROUND_TRIPS: u64 = 500;
/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

/// The measurement, for every count of open connections.
#[derive(Default)]
pub struct Run {
    pub cases: Vec<Case>,
    /// Why it was not measured.
    pub skipped: Option<String>,
}

/// One hand-over with `connections` open.
#[derive(Debug, Default)]
pub struct Case {
    pub connections: usize,
    /// The longest round trip of the ping-pong client, across the hand-over.
    pub longest_pause: Duration,
    /// SIGUSR2 to the next instance's `READY=1`.
    pub hand_over: Duration,
    /// Median round trip before the hand-over.
    pub median_before: Duration,
    /// Descriptors the relay stored.
    pub stored: usize,
    /// Round trips the ping-pong client made, and bytes it checked.
    pub round_trips: u64,
    pub bytes_checked: u64,
    /// Bytes of answers that did not match what was sent.
    pub bytes_lost: u64,
    /// Held connections that still answered afterwards.
    pub alive_after: usize,
    pub error: Option<String>,
}

/// Measures a hand-over with each count of open connections of `settings`.
pub fn measure(relay: &Path, backend: &Backend, dir: &Path, settings: &Settings) -> Run {
    let mut run = Run::default();
    for &connections in &settings.handover_connections {
        println!("hand-over with {connections} open connections");
        let case = match one(relay, backend, dir, connections) {
            Ok(case) => case,
            Err(e) => Case {
                connections,
                error: Some(e.to_string()),
                ..Case::default()
            },
        };
        match &case.error {
            None => println!(
                "  longest pause {:.1} ms, SIGUSR2 to READY {:.1} ms, {} descriptors stored, {} bytes lost, {} of {} alive after",
                ms(case.longest_pause),
                ms(case.hand_over),
                case.stored,
                case.bytes_lost,
                case.alive_after,
                connections
            ),
            Some(e) => println!("  failed: {e}"),
        }
        run.cases.push(case);
    }
    run
}

/// Milliseconds, for printing.
pub fn ms(span: Duration) -> f64 {
    span.as_secs_f64() * 1e3
}

/// What the manager hears.
enum Heard {
    Ready,
    Barrier,
}

/// The service manager's side: a notification socket and the store.
struct Manager {
    path: PathBuf,
    store: Arc<Mutex<Vec<(String, OwnedFd)>>>,
    heard: mpsc::Receiver<Heard>,
}

impl Manager {
    fn start(path: PathBuf) -> io::Result<Manager> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        let store = Arc::new(Mutex::new(Vec::new()));
        let (tell, heard) = mpsc::channel();
        let kept = store.clone();
        std::thread::spawn(move || listen(socket, kept, tell));
        Ok(Manager { path, store, heard })
    }

    fn wait(&self, what: &str, wanted: fn(&Heard) -> bool) -> io::Result<()> {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.heard.recv_timeout(left) {
                Ok(heard) if wanted(&heard) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(io::Error::other(format!("no {what} from the relay"))),
            }
        }
    }
}

/// Receives notifications until the socket is gone, as systemd would.
fn listen(
    socket: UnixDatagram,
    store: Arc<Mutex<Vec<(String, OwnedFd)>>>,
    tell: mpsc::Sender<Heard>,
) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    loop {
        let mut data = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let Ok(received) = rustix::net::recvmsg(
            &socket,
            &mut [io::IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) else {
            return;
        };
        let text = String::from_utf8_lossy(&data[..received.bytes]).into_owned();
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        let name = lines
            .iter()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored")
            .to_string();
        if lines.contains(&"FDSTORE=1") {
            let mut store = store.lock().unwrap();
            store.extend(fds.drain(..).map(|fd| (name.clone(), fd)));
        } else if lines.contains(&"FDSTOREREMOVE=1") {
            store.lock().unwrap().retain(|(n, _)| *n != name);
        }
        // Any other descriptor (BARRIER=1's) closes here, once read.
        drop(fds);
        let heard = if lines.contains(&"READY=1") {
            Some(Heard::Ready)
        } else if lines.contains(&"BARRIER=1") {
            Some(Heard::Barrier)
        } else {
            None
        };
        if let Some(heard) = heard
            && tell.send(heard).is_err()
        {
            return;
        }
    }
}

/// A relay instance, started as systemd would with what the store holds.
fn start_relay(
    relay: &Path,
    manager: &Manager,
    listen: &Path,
    backend: &Backend,
    log: &Path,
) -> io::Result<Child> {
    let store = manager.store.lock().unwrap();
    let mut command = Command::new(relay);
    command
        .args(["--fd-store", "-c", "8192"])
        .arg(listen)
        .arg(backend.tcp.to_string())
        .env("NOTIFY_SOCKET", &manager.path)
        .env("FDSTORE", "100000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?,
        );
    crate::peers::prepare(&mut command, None, Some(20_000));
    if !store.is_empty() {
        let names: Vec<&str> = store.iter().map(|(n, _)| n.as_str()).collect();
        command
            .env("LISTEN_FDS", store.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        pass_fds(
            &mut command,
            store.iter().map(|(_, fd)| fd.as_raw_fd()).collect(),
        );
    }
    let child = command.spawn()?;
    drop(store);
    Ok(child)
}

/// Makes `fds[i]` the child's descriptor `3 + i`, as systemd passes them.
fn pass_fds(command: &mut Command, fds: Vec<RawFd>) {
    let count = fds.len();
    let mut high = vec![-1; count];
    let base = 3 + count as RawFd + 16;
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // Out of the way first, so that placing one cannot overwrite
            // another that sits at 3, 4, …
            for i in 0..count {
                high[i] = libc::fcntl(fds[i], libc::F_DUPFD_CLOEXEC, base);
                if high[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in high.iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Waits for a child to exit; its status code.
fn wait_exit(child: &mut Child) -> io::Result<Option<i32>> {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    Err(io::Error::other("the relay did not exit after SIGUSR2"))
}

/// What the ping-pong client saw.
#[derive(Default)]
struct Seen {
    times: Vec<Duration>,
    bytes: u64,
    lost: u64,
    error: Option<String>,
}

fn one(relay: &Path, backend: &Backend, dir: &Path, connections: usize) -> io::Result<Case> {
    let tag = format!("handover-{connections}");
    let listen = dir.join(format!("{tag}.sock"));
    let log = dir.join(format!("{tag}.log"));
    let manager = Manager::start(dir.join(format!("{tag}.notify")))?;
    let mut first = start_relay(relay, &manager, &listen, backend, &log)?;
    manager.wait("READY=1", |h| matches!(h, Heard::Ready))?;
    let addr = Addr::Unix(listen.clone());

    let mut held = Vec::new();
    for _ in 1..connections {
        let mut connection = PingPong::open(&addr, MESSAGE)?;
        connection.round_trip()?;
        held.push(connection);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, done, addr) = (stop.clone(), done.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut connection = match PingPong::open(&addr, MESSAGE) {
                Ok(connection) => connection,
                Err(e) => {
                    seen.error = Some(e.to_string());
                    return seen;
                }
            };
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                match connection.checked_round_trip() {
                    Ok(true) => {}
                    Ok(false) => seen.lost += MESSAGE as u64,
                    Err(e) => {
                        seen.error = Some(format!("round trip {}: {e}", seen.times.len()));
                        return seen;
                    }
                }
                seen.times.push(started.elapsed());
                seen.bytes += MESSAGE as u64;
                done.fetch_add(1, Ordering::SeqCst);
            }
            seen
        })
    };
    let until = |count: u64| {
        let deadline = Instant::now() + STEP;
        while done.load(Ordering::SeqCst) < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    until(ROUND_TRIPS);
    let before = done.load(Ordering::SeqCst) as usize;

    let signalled = Instant::now();
    // SAFETY: kill with the pid of our own child, not yet reaped.
    unsafe { libc::kill(first.id() as i32, libc::SIGUSR2) };
    manager.wait("BARRIER=1", |h| matches!(h, Heard::Barrier))?;
    let status = wait_exit(&mut first)?;
    if status != Some(3) {
        return Err(io::Error::other(format!(
            "the relay exited with {status:?} after SIGUSR2, not 3 (see {})",
            log.display()
        )));
    }
    let stored = manager.store.lock().unwrap().len();
    let mut second = start_relay(relay, &manager, &listen, backend, &log)?;
    manager.wait("READY=1", |h| matches!(h, Heard::Ready))?;
    let hand_over = signalled.elapsed();
    until(before as u64 + ROUND_TRIPS);
    stop.store(true, Ordering::SeqCst);
    let seen = client.join().expect("ping-pong thread");
    let mut alive_after = 0;
    for connection in &mut held {
        if connection.checked_round_trip().unwrap_or(false) {
            alive_after += 1;
        }
    }
    let alive_after = alive_after + usize::from(seen.error.is_none());
    // SAFETY: as above.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    drop(held);
    let _ = wait_exit(&mut second);
    if let Some(e) = seen.error {
        return Err(io::Error::other(format!(
            "ping-pong client: {e} (see {})",
            log.display()
        )));
    }
    let mut sorted = seen.times[..before.min(seen.times.len())].to_vec();
    sorted.sort_unstable();
    Ok(Case {
        connections,
        longest_pause: seen.times.iter().copied().max().unwrap_or_default(),
        hand_over,
        median_before: sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        stored,
        round_trips: seen.times.len() as u64,
        bytes_checked: seen.bytes,
        bytes_lost: seen.lost,
        alive_after,
        error: None,
    })
}
