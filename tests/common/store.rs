//! systemd's service manager as far as `NOTIFY_SOCKET` and the file
//! descriptor store go, with the rules of its `src/core/service.c`, read
//! continuously by a thread as PID 1 reads them:
//!
//! - `FDSTORE=1` keeps each descriptor under `FDNAME=` (entries of one name
//!   kept apart), drops one that is the same open file as a descriptor
//!   already stored (kcmp), and closes what does not fit once the store
//!   holds its maximum;
//! - entries stored without `FDPOLL=0` are dropped when they report an
//!   error or a hang-up;
//! - `FDSTOREREMOVE=1` drops every entry of the name;
//! - any other descriptor (`BARRIER=1`'s) is closed once the message is
//!   processed.
//!
//! Processing can be paused, as a busy PID 1 would be late.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{DEADLINE, Relay, TempDir, command, socket_activated};

/// One stored descriptor.
pub struct Stored {
    pub name: String,
    pub fd: OwnedFd,
    /// Dropped on an error or hang-up (stored without `FDPOLL=0`).
    polled: bool,
}

#[derive(Default)]
struct State {
    store: Vec<Stored>,
    /// Every message processed, in order.
    messages: Vec<String>,
    /// What the store refused, and why.
    refused: Vec<String>,
    paused: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    max: usize,
}

/// The service manager of the relays a test starts.
pub struct Manager {
    shared: Arc<Shared>,
    dir: TempDir,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `$FDSTORE` for the relays it starts (systemd 254 and later set it).
    pub size: Option<String>,
    /// Messages already looked at by [`Manager::wait_for`].
    seen: usize,
    /// Duplicates of what the next instance is passed, open until then.
    passing: Vec<OwnedFd>,
}

impl Manager {
    /// A manager whose store holds `max` descriptors (`FileDescriptorStoreMax=`).
    pub fn with_max(max: usize) -> Manager {
        let dir = TempDir::new();
        let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            max,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || serve(&socket, &shared))
        };
        Manager {
            shared,
            dir,
            thread: Some(thread),
            size: None,
            seen: 0,
            passing: Vec::new(),
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn notify_socket(&self) -> String {
        self.dir.arg("notify")
    }

    /// Stops processing messages (they wait in the socket) until
    /// [`Manager::resume`].
    pub fn pause(&self) {
        self.shared.state.lock().unwrap().paused = true;
    }

    pub fn resume(&self) {
        self.shared.state.lock().unwrap().paused = false;
    }

    /// Waits for a processed message with the line `wanted`, after those
    /// already seen; the message.
    pub fn wait_for(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut state = self.shared.state.lock().unwrap();
        loop {
            while self.seen < state.messages.len() {
                let message = state.messages[self.seen].clone();
                self.seen += 1;
                if message.lines().any(|l| l == wanted) {
                    return message;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {wanted} within {DEADLINE:?}");
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Waits until every message sent to the socket so far is processed
    /// (datagrams are read in order: a marker sent now comes last).
    pub fn settle(&mut self) {
        let marker = format!("TEST_SETTLED={}", super::unique_name("settle"));
        let client = UnixDatagram::unbound().unwrap();
        client
            .send_to(marker.as_bytes(), self.dir.join("notify"))
            .unwrap();
        self.wait_for(&marker);
    }

    /// Every processed message with a line beginning with `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        let state = self.shared.state.lock().unwrap();
        state
            .messages
            .iter()
            .flat_map(|m| m.lines())
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    /// What the store refused so far, and why.
    pub fn refused(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().refused.clone()
    }

    /// The names of what is stored, in order.
    pub fn names(&self) -> Vec<String> {
        let state = self.shared.state.lock().unwrap();
        state.store.iter().map(|s| s.name.clone()).collect()
    }

    /// `systemctl stop`: the store is emptied (its descriptors closed).
    pub fn clear(&self) {
        self.shared.state.lock().unwrap().store.clear();
    }

    /// Puts `fd` into the store under `name`, as a previous instance (or
    /// something else of the unit's) would have.
    pub fn put(&self, name: &str, fd: OwnedFd) {
        self.shared.state.lock().unwrap().store.push(Stored {
            name: name.into(),
            fd,
            polled: false,
        });
    }

    /// Reads messages until `READY=1`.
    pub fn until_ready(&mut self) {
        self.wait_for("READY=1");
    }

    /// A relay started with NOTIFY_SOCKET, and with the store passed back
    /// as systemd passes it, once it is ready.
    pub fn start(&mut self, args: &[&str]) -> Relay {
        let relay = Relay::start_command(self.command(args), 1);
        self.spawned();
        self.until_ready();
        relay
    }

    /// The instance that [`Manager::command`] prepared runs: the duplicates
    /// made for it are closed (the store keeps its own).
    pub fn spawned(&mut self) {
        self.passing.clear();
    }

    /// The command that starts the next instance, as systemd would: the
    /// store in descriptors 3… and LISTEN_FDNAMES, NOTIFY_SOCKET, and
    /// `$FDSTORE` if set.
    pub fn command(&mut self, args: &[&str]) -> Command {
        let state = self.shared.state.lock().unwrap();
        self.passing = state
            .store
            .iter()
            .map(|s| s.fd.try_clone().unwrap())
            .collect();
        let names: Vec<String> = state.store.iter().map(|s| s.name.clone()).collect();
        drop(state);
        let fds: Vec<i32> = self.passing.iter().map(|fd| fd.as_raw_fd()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut command = if fds.is_empty() {
            command(args)
        } else {
            socket_activated(args, &fds, &names)
        };
        command.env("NOTIFY_SOCKET", self.notify_socket());
        if let Some(size) = &self.size {
            command.env("FDSTORE", size);
        }
        command
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// PID 1's side: reads and processes messages until the manager is dropped.
fn serve(socket: &UnixDatagram, shared: &Shared) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    while !shared.stop.load(Ordering::SeqCst) {
        drop_hung_up(shared);
        if shared.state.lock().unwrap().paused {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let mut data = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let Ok(received) = rustix::net::recvmsg(
            socket,
            &mut [std::io::IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) else {
            continue;
        };
        let text = String::from_utf8_lossy(&data[..received.bytes]).into_owned();
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        let mut state = shared.state.lock().unwrap();
        let line = |wanted: &str| text.lines().any(|l| l == wanted);
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored")
            .to_string();
        if line("FDSTOREREMOVE=1") {
            state.store.retain(|s| s.name != name);
        }
        if line("FDSTORE=1") {
            let polled = !line("FDPOLL=0");
            for fd in fds.drain(..) {
                if state.store.len() >= shared.max {
                    state.refused.push(format!("{name}: the store is full"));
                } else if state.store.iter().any(|s| same_file(&s.fd, &fd)) {
                    state.refused.push(format!("{name}: a duplicate"));
                } else {
                    state.store.push(Stored {
                        name: name.clone(),
                        fd,
                        polled,
                    });
                }
            }
        }
        // Descriptors not stored (BARRIER=1's above all) close here.
        drop(fds);
        state.messages.push(text);
        shared.changed.notify_all();
    }
}

/// Drops polled entries that report an error or a hang-up.
fn drop_hung_up(shared: &Shared) {
    use rustix::event::{PollFd, PollFlags};
    let mut state = shared.state.lock().unwrap();
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut hung_up = Vec::new();
    for (i, stored) in state.store.iter().enumerate().filter(|(_, s)| s.polled) {
        let mut fds = [PollFd::new(&stored.fd, PollFlags::empty())];
        if rustix::event::poll(&mut fds, Some(&zero)).is_ok()
            && fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR)
        {
            hung_up.push(i);
        }
    }
    for i in hung_up.into_iter().rev() {
        state.store.remove(i);
    }
}

/// Whether two descriptors are the same open file (`kcmp(KCMP_FILE)`), as
/// systemd checks before it stores one.
fn same_file(a: &impl AsFd, b: &impl AsFd) -> bool {
    const KCMP_FILE: libc::c_int = 0;
    let pid = std::process::id() as libc::pid_t;
    // SAFETY: kcmp only compares two descriptors of this process.
    let same = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            a.as_fd().as_raw_fd() as libc::c_ulong,
            b.as_fd().as_raw_fd() as libc::c_ulong,
        )
    };
    same == 0
}
