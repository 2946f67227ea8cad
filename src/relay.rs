//! The data path of one connection, as an explicit state: two sockets and,
//! for each direction, what is in flight and whether it has ended. A single
//! future polls both directions until both have ended.
//!
//! - An EOF travels as a half-close (`shutdown(SHUT_WR)`) after every byte
//!   read before it has been written; the other direction goes on.
//! - A reset or error on either side closes both (with a reset towards TCP
//!   peers, so it propagates).
//! - Bytes move with `splice(2)` through a pipe taken from a pool only while
//!   they are in flight, so memory is bounded by one pipe per direction and
//!   an idle connection holds none; where splice does not apply, through a
//!   buffer with the same rules.
//! - Every operation is tried before waiting for readiness: data is usually
//!   there already, and asking the reactor first would cost a round trip per
//!   message.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use socket2::Socket;

use crate::pipe::{self, Pipe};

/// How many bytes the copy path moves per read.
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
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// From the client to CONNECT.
    pub up: u64,
    /// From CONNECT to the client.
    pub down: u64,
}

/// Relays between `client` and `backend` until both directions are done,
/// then closes both.
pub fn relay(
    client: Async<Socket>,
    backend: Async<Socket>,
    idle_timeout: Option<Duration>,
) -> Relay {
    Relay {
        client,
        backend,
        up: Direction::default(),
        down: Direction::default(),
        idle: idle_timeout.map(|span| {
            Box::new(Idle {
                span,
                last: Instant::now(),
                timer: Timer::after(span),
            })
        }),
    }
}

/// One connection being relayed; resolves to the bytes moved and how it ended.
pub struct Relay {
    client: Async<Socket>,
    backend: Async<Socket>,
    /// Client → backend.
    up: Direction,
    /// Backend → client.
    down: Direction,
    /// Boxed: most relays have no idle timeout, and every byte of this
    /// struct is paid for each held connection.
    idle: Option<Box<Idle>>,
}

/// `--idle-timeout`: when a byte last moved, and a timer for the deadline.
struct Idle {
    span: Duration,
    last: Instant,
    timer: Timer,
}

/// One direction's state.
#[derive(Default)]
struct Direction {
    /// Bytes moved so far.
    moved: u64,
    /// What holds bytes read but not yet written.
    carrier: Carrier,
    /// EOF was seen and passed on as a half-close.
    done: bool,
}

/// Where a direction's bytes in flight are.
#[derive(Default)]
enum Carrier {
    /// Nothing in flight; splice is to be tried (the starting state).
    #[default]
    Idle,
    /// `len` bytes sit in this pipe.
    Pipe { pipe: Pipe, len: u32 },
    /// Splice does not apply to these sockets: a buffer, `start..end` unsent.
    Buffer {
        buffer: Box<[u8]>,
        start: u32,
        end: u32,
        /// Whether to stay with buffers afterwards (splice does not apply).
        again: bool,
    },
    /// Splice does not apply and nothing is in flight.
    BufferIdle,
    /// No pipe could be had: one read through a buffer, then splice again.
    BufferOnce,
}

impl Future for Relay {
    type Output = (Totals, Outcome);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let before = this.up.moved + this.down.moved;
        let up = this.up.poll(&this.client, &this.backend, cx);
        let down = this.down.poll(&this.backend, &this.client, cx);
        let outcome = match (up, down) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Some(Outcome::Failed(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Some(Outcome::Done),
            _ => None,
        };
        let outcome = outcome.or_else(|| {
            let moved = this.up.moved + this.down.moved != before;
            this.idle.as_mut().and_then(|idle| idle.poll(moved, cx))
        });
        match outcome {
            None => Poll::Pending,
            Some(outcome) => {
                if matches!(outcome, Outcome::Failed(_)) {
                    // Close with a reset rather than a FIN so the other side
                    // sees an abort, not a clean end of stream.
                    for socket in [&this.client, &this.backend] {
                        let _ = socket.get_ref().set_linger(Some(Duration::ZERO));
                    }
                }
                Poll::Ready((
                    Totals {
                        up: this.up.moved,
                        down: this.down.moved,
                    },
                    outcome,
                ))
            }
        }
    }
}

impl Idle {
    /// Restarts the deadline when bytes moved; `Some(Idle)` once it passes.
    fn poll(&mut self, moved: bool, cx: &mut Context<'_>) -> Option<Outcome> {
        if moved {
            self.last = Instant::now();
            self.timer.set_at(self.last + self.span);
        }
        loop {
            Pin::new(&mut self.timer)
                .poll(cx)
                .is_ready()
                .then_some(())?;
            let deadline = self.last + self.span;
            if Instant::now() >= deadline {
                return Some(Outcome::Idle);
            }
            self.timer.set_at(deadline);
        }
    }
}

impl Direction {
    /// Moves bytes `from` → `to` until EOF (then half-closes `to`), an
    /// error, or nothing can move now.
    fn poll(
        &mut self,
        from: &Async<Socket>,
        to: &Async<Socket>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        ready!(self.pump(from, to, cx))?;
        self.done = true;
        match to.get_ref().shutdown(Shutdown::Write) {
            // The other side may already be gone entirely; the other
            // direction will notice.
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Ready(Ok) at EOF with nothing left in flight.
    fn pump(
        &mut self,
        from: &Async<Socket>,
        to: &Async<Socket>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let (source, sink) = (from.get_ref(), to.get_ref());
        loop {
            match &mut self.carrier {
                Carrier::Idle => {
                    let Some(pipe) = pipe::take() else {
                        // No pipe to splice through (none worth having, or
                        // descriptors are short): a buffer, this once.
                        self.carrier = Carrier::BufferOnce;
                        continue;
                    };
                    match retry(|| pipe::splice(source, pipe.write_end(), pipe.capacity())) {
                        Ok(0) => {
                            pipe::give(pipe);
                            return Poll::Ready(Ok(()));
                        }
                        Ok(len) => {
                            self.carrier = Carrier::Pipe {
                                pipe,
                                len: len as u32,
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            pipe::give(pipe);
                            ready!(from.poll_readable(cx))?;
                        }
                        // Not spliceable (not a socket the kernel can splice).
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.moved == 0 => {
                            pipe::give(pipe);
                            self.carrier = Carrier::BufferIdle;
                        }
                        Err(e) => {
                            pipe::give(pipe);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Carrier::Pipe { pipe, len } => {
                    match retry(|| pipe::splice(pipe.read_end(), sink, *len as usize)) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            self.moved += n as u64;
                            *len -= n as u32;
                            if *len == 0 {
                                let Carrier::Pipe { pipe, .. } = std::mem::take(&mut self.carrier)
                                else {
                                    unreachable!("matched above")
                                };
                                pipe::give(pipe);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(to.poll_writable(cx))?
                        }
                        // The pipe still holds bytes: it is dropped, not pooled.
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Carrier::BufferIdle | Carrier::BufferOnce => {
                    let mut buffer = vec![0; CHUNK].into_boxed_slice();
                    match retry(|| from.get_ref().read(&mut buffer)) {
                        Ok(0) => return Poll::Ready(Ok(())),
                        Ok(end) => {
                            self.carrier = Carrier::Buffer {
                                buffer,
                                start: 0,
                                end: end as u32,
                                again: matches!(self.carrier, Carrier::BufferIdle),
                            }
                        }
                        // The buffer is dropped: idle connections hold none.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(from.poll_readable(cx))?
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Carrier::Buffer {
                    buffer,
                    start,
                    end,
                    again,
                } => match retry(|| to.get_ref().write(&buffer[*start as usize..*end as usize])) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.moved += n as u64;
                        *start += n as u32;
                        if start == end {
                            self.carrier = if *again {
                                Carrier::BufferIdle
                            } else {
                                Carrier::Idle
                            };
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(to.poll_writable(cx))?
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                },
            }
        }
    }
}

/// Runs a system call again when a signal interrupted it.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection must cost little: the relay state is kept small.
    #[test]
    fn relay_state_is_small() {
        let (a, b) = Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        let relay = relay(Async::new(a).unwrap(), Async::new(b).unwrap(), None);
        assert!(
            std::mem::size_of_val(&relay) <= 256,
            "{} bytes",
            std::mem::size_of_val(&relay)
        );
    }
}
