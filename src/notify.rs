//! Telling systemd how the relay is doing (`sd_notify(3)`): `READY=1` once
//! every listener accepts and the sandbox is in place, `STATUS=` with the
//! connection counts, `STOPPING=1`, and watchdog keep-alives. Without
//! `NOTIFY_SOCKET` every call does nothing.
//!
//! The socket is connected once, before the sandbox ([`connect`]):
//! `NOTIFY_SOCKET` may be a path or an abstract name (`@…`), and Landlock's
//! abstract-socket scoping checks `connect()`, not a datagram socket that was
//! connected before the restriction. Every message goes out in the order it
//! was made: at once when the socket has room, otherwise queued for a task
//! that waits for room instead of stalling the relay; the store messages of
//! a hand-over (sent at once, waiting for room) go after everything queued.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use rustix::event::{PollFd, PollFlags};
use sd_notify::NotifyState;
use socket2::{Domain, SockAddr, Socket, Type};

/// How often `STATUS=` may change (systemd shows it in `systemctl status`).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The connected notification socket (the sending task has a duplicate).
static SOCKET: OnceLock<Socket> = OnceLock::new();
/// Messages not sent yet, in order, once the sending task runs.
static OUTBOX: Mutex<Outbox> = Mutex::new(Outbox {
    started: false,
    queue: VecDeque::new(),
    waker: None,
});

/// Every message to the service manager goes out in the order it was made,
/// whichever path it takes: removals from the store must not be overtaken
/// by the store messages of a hand-over (systemd drops a descriptor it
/// already holds under another name, and the removal that follows would
/// delete the only copy).
struct Outbox {
    /// The sending task runs ([`start`]): messages may wait here.
    started: bool,
    queue: VecDeque<Message>,
    /// The sending task, waiting for a message.
    waker: Option<Waker>,
}

/// One datagram: its text and the descriptors that go with it.
struct Message {
    text: String,
    fds: Vec<OwnedFd>,
    /// Set if it could not be sent (a barrier must not take the closing
    /// of its descriptor here for systemd's answer).
    failed: Option<Arc<AtomicBool>>,
}

impl Message {
    fn new(text: String) -> Message {
        Message {
            text,
            fds: Vec::new(),
            failed: None,
        }
    }

    /// It could not be sent: said once, and marked.
    fn fail(&self, e: rustix::io::Errno) {
        crate::warn!("cannot notify systemd: {e}");
        if let Some(failed) = &self.failed {
            failed.store(true, Ordering::SeqCst);
        }
    }
}

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

/// Stores `fd` under `name` for as long as it has no error or hang-up
/// (systemd polls it): a descriptor that removes itself.
pub fn store_polled(name: &str, fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<()> {
    let text = format!("FDSTORE=1\nFDNAME={name}\n");
    send_now(&text, &[fd], deadline)
}

/// Waits until systemd has processed every message sent before
/// (`BARRIER=1`: it closes the descriptor that comes with it), at most
/// `timeout`.
pub async fn barrier(timeout: Duration) -> io::Result<()> {
    if SOCKET.get().is_none() {
        return Err(io::Error::other("NOTIFY_SOCKET is not set"));
    }
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let read = Async::new(read)?;
    let failed = Arc::new(AtomicBool::new(false));
    deliver(Message {
        text: "BARRIER=1\n".into(),
        fds: vec![write],
        failed: Some(failed.clone()),
    });
    // Readable (its end) once systemd has closed the descriptor, and the
    // message that carried it is gone from here.
    let answered = async {
        read.readable().await?;
        if failed.load(Ordering::SeqCst) {
            return Err(io::Error::other("BARRIER=1 could not be sent"));
        }
        Ok(())
    };
    futures_lite::future::or(answered, async {
        Timer::after(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "systemd did not answer BARRIER=1 within {}",
                crate::timespan::format(Some(timeout))
            ),
        ))
    })
    .await
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
    deliver(Message::new(format!("FDSTOREREMOVE=1\nFDNAME={name}\n")));
}

/// Sends one datagram without waiting; `Err(AGAIN)` when the socket is full.
fn try_send(socket: &Socket, text: &str, fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    loop {
        match rustix::net::sendmsg(
            socket,
            &[io::IoSlice::new(text.as_bytes())],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => {}
            other => return other.map(drop),
        }
    }
}

/// Queues a message behind those still waiting, or sends it now when none
/// is. Before the sending task runs, everything is sent at once (waiting a
/// second at most for room).
fn deliver(message: Message) {
    let Some(socket) = SOCKET.get() else {
        return;
    };
    let mut outbox = OUTBOX.lock().expect("not poisoned");
    if !outbox.started {
        drop(outbox);
        let fds: Vec<_> = message.fds.iter().map(|fd| fd.as_fd()).collect();
        let deadline = Instant::now() + Duration::from_secs(1);
        if let Err(e) = send_now(&message.text, &fds, deadline) {
            message.fail(rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO));
        }
        return;
    }
    if outbox.queue.is_empty() {
        let fds: Vec<_> = message.fds.iter().map(|fd| fd.as_fd()).collect();
        match try_send(socket, &message.text, &fds) {
            Ok(()) => return,
            Err(rustix::io::Errno::AGAIN) => {}
            Err(e) => {
                message.fail(e);
                return;
            }
        }
    }
    outbox.queue.push_back(message);
    if let Some(waker) = outbox.waker.take() {
        waker.wake();
    }
}

/// Sends what waits in the queue, in order, until it is empty or the socket
/// is full (`Err(AGAIN)`).
fn flush(socket: &Socket, outbox: &mut Outbox) -> rustix::io::Result<()> {
    while let Some(message) = outbox.queue.front() {
        let fds: Vec<_> = message.fds.iter().map(|fd| fd.as_fd()).collect();
        match try_send(socket, &message.text, &fds) {
            Ok(()) => {}
            Err(rustix::io::Errno::AGAIN) => return Err(rustix::io::Errno::AGAIN),
            Err(e) => message.fail(e),
        }
        outbox.queue.pop_front();
    }
    Ok(())
}

/// Sends one message with descriptors now, after every message still
/// queued, waiting (until `deadline`) for room, which a burst of stored
/// descriptors can use up.
fn send_now(text: &str, fds: &[BorrowedFd<'_>], deadline: Instant) -> io::Result<()> {
    let Some(socket) = SOCKET.get() else {
        return Err(io::Error::other("NOTIFY_SOCKET is not set"));
    };
    let mut outbox = OUTBOX.lock().expect("not poisoned");
    loop {
        match flush(socket, &mut outbox) {
            Ok(()) => break,
            Err(rustix::io::Errno::AGAIN) => wait_until(socket, PollFlags::OUT, deadline)?,
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        match try_send(socket, text, fds) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::AGAIN) => wait_until(socket, PollFlags::OUT, deadline)?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Starts the task that sends queued messages when systemd is slow to read,
/// so that the relay never waits for it. Call on the runtime's thread.
pub fn start() {
    let Some(socket) = SOCKET.get() else {
        return;
    };
    let writable = match socket.try_clone().and_then(Async::new_nonblocking) {
        Ok(socket) => socket,
        Err(e) => {
            crate::warn!("cannot notify systemd: {e}");
            return;
        }
    };
    OUTBOX.lock().expect("not poisoned").started = true;
    crate::runtime::spawn(async move {
        loop {
            futures_lite::future::poll_fn(|cx| {
                let mut outbox = OUTBOX.lock().expect("not poisoned");
                if outbox.queue.is_empty() {
                    outbox.waker = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if writable.writable().await.is_err() {
                return;
            }
            let _ = flush(socket, &mut OUTBOX.lock().expect("not poisoned"));
        }
    });
}

fn enabled() -> bool {
    SOCKET.get().is_some()
}

fn send(states: &[NotifyState<'_>]) {
    let text = states
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    deliver(Message::new(text + "\n"));
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
/// (`WATCHDOG_USEC`, for this process per `WATCHDOG_PID`), each time only
/// once `alive` has resolved with `Ok`: every thread that moves bytes
/// showed that it goes on (this task runs on the runtime's). Runs until
/// dropped.
pub async fn keep_watchdog_happy<F, A>(alive: A)
where
    A: Fn() -> F,
    F: std::future::Future<Output = io::Result<()>>,
{
    let Some(interval) = sd_notify::watchdog_enabled().filter(|_| enabled()) else {
        return futures_lite::future::pending().await;
    };
    let mut silent = crate::log::Throttle::new(Duration::from_secs(10));
    loop {
        let answered = futures_lite::future::or(alive(), async {
            Timer::after(interval / 4).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", interval / 4),
            ))
        })
        .await;
        match answered {
            Ok(()) => send(&[NotifyState::Watchdog]),
            Err(e) => {
                if let Some(held_back) = silent.allow() {
                    crate::warn!(
                        "watchdog: the relay engine did not answer ({e}): no WATCHDOG=1{}",
                        crate::log::held_back(held_back)
                    );
                }
            }
        }
        Timer::after(interval / 2).await;
    }
}
