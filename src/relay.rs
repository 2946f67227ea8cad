//! The data path of one connection: two directions pumped concurrently until
//! both have ended. An EOF travels as a half-close (`shutdown(SHUT_WR)`) after
//! every byte read before it has been written; a reset or error on either
//! side closes both (with a reset towards TCP peers, so it propagates).
//!
//! Memory stays bounded: a direction holds at most one pipe (or buffer),
//! and only while bytes are in flight; an idle connection holds none.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use socket2::Socket;

use crate::pipe;

/// How many bytes the copy path moves per read. 64 KiB halves the
/// system-call count of async-std's 8 KiB copy for bulk transfers.
const CHUNK: usize = 64 * 1024;

/// How a relayed connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both sides ended their sending; everything was delivered.
    Done,
    /// `--idle-timeout` elapsed with no byte in either direction.
    Idle,
    /// A reset or error on one side; both were closed.
    Failed(io::Error),
}

/// Bytes moved in each direction.
#[derive(Debug, Default)]
pub struct Totals {
    /// From the client to CONNECT.
    pub up: u64,
    /// From CONNECT to the client.
    pub down: u64,
}

/// Relays between `client` and `backend` until both directions are done,
/// then closes both.
pub async fn relay(
    client: Async<Socket>,
    backend: Async<Socket>,
    idle_timeout: Option<Duration>,
) -> (Totals, Outcome) {
    let activity = Activity::new();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = future::try_zip(
        pump(&client, &backend, &up, &activity),
        pump(&backend, &client, &down, &activity),
    );
    let outcome = match idle_timeout {
        None => both.await.map(|_| Outcome::Done),
        Some(span) => future::or(both.map_ok(|_| Outcome::Done), activity.expire(span)).await,
    }
    .unwrap_or_else(Outcome::Failed);
    if matches!(outcome, Outcome::Failed(_)) {
        // Close with a reset rather than a FIN so the other side sees an
        // abort, not a clean end of stream.
        for socket in [&client, &backend] {
            let _ = socket.get_ref().set_linger(Some(Duration::ZERO));
        }
    }
    let totals = Totals {
        up: up.into_inner(),
        down: down.into_inner(),
    };
    (totals, outcome)
}

/// Moves `from` → `to` until EOF, then half-closes `to`: zero-copy through a
/// pipe where the kernel can splice both sockets, else through a buffer.
async fn pump(
    from: &Async<Socket>,
    to: &Async<Socket>,
    moved: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    if !splice_pump(from, to, moved, activity).await? {
        copy_pump(from, to, moved, activity).await?;
    }
    match to.get_ref().shutdown(Shutdown::Write) {
        // The other side may already be gone entirely; the other direction
        // will notice.
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// The zero-copy data path: `splice(2)` socket → pipe → socket. A pipe is
/// taken from the pool only while bytes are in flight, so an idle
/// connection holds none. Returns `Ok(false)` if these sockets cannot be
/// spliced (nothing was moved then), `Ok(true)` at EOF.
async fn splice_pump(
    from: &Async<Socket>,
    to: &Async<Socket>,
    moved: &AtomicU64,
    activity: &Activity,
) -> io::Result<bool> {
    let (source, sink) = (from.get_ref().as_raw_fd(), to.get_ref().as_raw_fd());
    loop {
        let pipe = pipe::take()?;
        // Try before waiting: data is usually there already, and asking the
        // reactor first would cost a round trip per message.
        let filled = match pipe::splice(source, pipe.write_fd(), pipe.capacity()) {
            Ok(0) => {
                pipe::give(pipe);
                return Ok(true);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe::give(pipe);
                from.readable().await?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                pipe::give(pipe);
                continue;
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL) && moved.load(Ordering::Relaxed) == 0 =>
            {
                pipe::give(pipe);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let mut left = filled;
        while left > 0 {
            match pipe::splice(pipe.read_fd(), sink, left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The pipe still holds bytes: it is dropped, not pooled.
                Err(e) => return Err(e),
            }
        }
        pipe::give(pipe);
        moved.fetch_add(filled as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// The portable data path: read into a buffer, write it out. The buffer is
/// freed whenever the source runs dry, so idle connections hold none.
async fn copy_pump(
    from: &Async<Socket>,
    to: &Async<Socket>,
    moved: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        if buffer.is_empty() {
            buffer = vec![0; CHUNK];
        }
        let read = match from.get_ref().read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buffer = Vec::new();
                from.readable().await?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write_all(to, &buffer[..read]).await?;
        moved.fetch_add(read as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Writes all of `data` (used for the PROXY header, before relaying).
pub async fn write_all(to: &Async<Socket>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let written = to.write_with(|socket| (&*socket).write(data)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[written..];
    }
    Ok(())
}

/// When a byte last moved, for `--idle-timeout`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once `span` passes with no activity.
    async fn expire(&self, span: Duration) -> io::Result<Outcome> {
        loop {
            let deadline =
                self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + span;
            if Instant::now() >= deadline {
                return Ok(Outcome::Idle);
            }
            Timer::at(deadline).await;
        }
    }
}

trait MapOk<T> {
    fn map_ok<U>(self, f: impl FnOnce(T) -> U) -> impl Future<Output = io::Result<U>>;
}

impl<T, F: Future<Output = io::Result<T>>> MapOk<T> for F {
    async fn map_ok<U>(self, f: impl FnOnce(T) -> U) -> io::Result<U> {
        self.await.map(f)
    }
}
