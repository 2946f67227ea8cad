//! Telling systemd how the relay is doing (`sd_notify(3)`): `READY=1` once
//! every listener accepts and the sandbox is in place, `STATUS=` with the
//! connection counts, `STOPPING=1`, and watchdog keep-alives. Without
//! `NOTIFY_SOCKET` every call does nothing.
//!
//! The socket is connected once, before the sandbox ([`connect`]):
//! `NOTIFY_SOCKET` may be a path or an abstract name (`@…`), and Landlock's
//! abstract-socket scoping checks `connect()`, not a datagram socket that was
//! connected before the restriction. Messages are sent by one task, in
//! order, without blocking: when systemd is slow to read, the task waits for
//! room instead of stalling the relay.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use rustix::event::{PollFd, PollFlags};
use sd_notify::NotifyState;
use socket2::{Domain, SockAddr, Socket, Type};

/// How often `STATUS=` may change (systemd shows it in `systemctl status`).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The connected notification socket (the sending task has a duplicate).
static SOCKET: OnceLock<Socket> = OnceLock::new();
/// Messages for the sending task.
static QUEUE: OnceLock<async_channel::Sender<String>> = OnceLock::new();

/// Connects to `NOTIFY_SOCKET`, if set. Called before the sandbox; a
/// failure is a warning (the relay still serves).
pub fn connect() {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let connected = (|| {
        let bytes = target.as_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => crate::endpoint::abstract_addr(name)?,
            None => SockAddr::unix(&target)?,
        };
        let socket = Socket::new(Domain::UNIX, Type::DGRAM.cloexec().nonblocking(), None)?;
        socket.connect(&address)?;
        Ok::<_, io::Error>(socket)
    })();
    match connected {
        Ok(socket) => {
            let _ = SOCKET.set(socket);
        }
        Err(e) => crate::warn!(
            "cannot connect to NOTIFY_SOCKET {}: {e}; systemd will not hear from the relay",
            target.to_string_lossy()
        ),
    }
}

/// Whether systemd listens (`NOTIFY_SOCKET` is connected).
pub fn connected() -> bool {
    SOCKET.get().is_some()
}

/// Hands `fds` to systemd's file descriptor store (`FDSTORE=1`) under
/// `name`, at once. systemd refuses silently when the unit has no store
/// (`FileDescriptorStoreMax=0`).
pub fn store(name: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let text = format!("FDSTORE=1\nFDNAME={name}\n");
    send_now(&text, fds, Instant::now() + Duration::from_secs(1))
}

/// Stores one descriptor of a live connection: systemd must not drop it
/// when its peer hangs up (`FDPOLL=0`), the next instance sees to that.
pub fn store_connection(name: &str, fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<()> {
    let text = format!("FDSTORE=1\nFDPOLL=0\nFDNAME={name}\n");
    send_now(&text, &[fd], deadline)
}

/// Waits until systemd has read every message sent before
/// (`BARRIER=1`: it closes the descriptor that comes with it).
pub fn barrier(deadline: Instant) -> io::Result<()> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    send_now("BARRIER=1\n", &[write.as_fd()], deadline)?;
    drop(write);
    // Readable (its end) once systemd has closed the descriptor.
    wait_until(&read, PollFlags::IN, deadline)
}

/// Waits until `fd` reports `events`, or `deadline` passes (an error).
fn wait_until(fd: impl AsFd, events: PollFlags, deadline: Instant) -> io::Result<()> {
    let mut fds = [PollFd::new(&fd, events)];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let timeout = rustix::event::Timespec::try_from(left).ok();
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Drops a name from the store: its descriptor now lives here, and a copy
/// kept by systemd would hold a closed connection open.
pub fn remove_stored(name: &str) {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let _ = queue.try_send(format!("FDSTOREREMOVE=1\nFDNAME={name}\n"));
}

/// Sends one message with descriptors now, waiting (until `deadline`) for
/// room in the queue, which a burst of stored descriptors can fill.
fn send_now(text: &str, fds: &[BorrowedFd<'_>], deadline: Instant) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let Some(socket) = SOCKET.get() else {
        return Err(io::Error::other("NOTIFY_SOCKET is not set"));
    };
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(fds));
        match rustix::net::sendmsg(
            socket,
            &[io::IoSlice::new(text.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_until(socket, PollFlags::OUT, deadline)?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Starts the task that sends the messages; from then on the functions
/// below queue them. Call on the runtime's thread.
pub fn start() {
    let Some(socket) = SOCKET.get() else {
        return;
    };
    let socket = match socket.try_clone().and_then(Async::new_nonblocking) {
        Ok(socket) => socket,
        Err(e) => {
            crate::warn!("cannot notify systemd: {e}");
            return;
        }
    };
    let (sender, receiver) = async_channel::unbounded::<String>();
    let _ = QUEUE.set(sender);
    crate::runtime::spawn(async move {
        while let Ok(message) = receiver.recv().await {
            let sent = socket
                .write_with(|s| s.send_with_flags(message.as_bytes(), libc::MSG_NOSIGNAL))
                .await;
            if let Err(e) = sent {
                crate::warn!("cannot notify systemd: {e}");
            }
        }
    });
}

fn enabled() -> bool {
    QUEUE.get().is_some()
}

fn send(states: &[NotifyState<'_>]) {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let message = states
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let _ = queue.try_send(message + "\n");
}

/// `READY=1` with a first status.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new `STATUS=`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1` with a status saying why.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The status line: endpoints and connection counts.
pub fn status_text(endpoints: &str, active: usize, total: u64) -> String {
    format!("{endpoints}: {active} active, {total} total connections")
}

/// Keeps `STATUS=` current, at most once per [`STATUS_INTERVAL`] and only
/// when the counts changed. `counts` reads (active, total). Runs until
/// dropped.
pub async fn report_status(endpoints: String, counts: impl Fn() -> (usize, u64)) {
    if !enabled() {
        return futures_lite::future::pending().await;
    }
    // What READY=1 reported: a connection counted before this task first
    // runs (the one that triggered socket activation, say) is news.
    let mut last = (0, 0);
    loop {
        Timer::after(STATUS_INTERVAL).await;
        let now = counts();
        if now != last {
            send(&[NotifyState::Status(&status_text(&endpoints, now.0, now.1))]);
            last = now;
        }
    }
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for
/// (`WATCHDOG_USEC`, for this process per `WATCHDOG_PID`). Runs until dropped.
pub async fn keep_watchdog_happy() {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|_| enabled()) else {
        return futures_lite::future::pending().await;
    };
    loop {
        send(&[NotifyState::Watchdog]);
        Timer::after(interval / 2).await;
    }
}
