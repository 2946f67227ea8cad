//! The data path of one connection, as an explicit state: two sockets and,
//! for each direction, what holds its bytes in flight, how the next ones
//! move, and whether it has ended. [`Relay::step`] moves both directions
//! as far as they go, until both have ended.
//!
//! - An EOF travels as a half-close (`shutdown(SHUT_WR)`) after every byte
//!   read before it has been written; the other direction goes on.
//! - A reset or error on either side closes both (with a reset towards TCP
//!   peers, so it propagates).
//! - Bytes move with `splice(2)` through a pipe taken from a pool only while
//!   they are in flight, so memory is bounded by one pipe per direction and
//!   an idle connection holds none; for small messages (see [`COPY_BELOW`])
//!   and where splice does not apply, through a buffer with the same rules.
//! - Readiness comes from the engine (`crate::engine`): each socket is
//!   registered once, level-triggered, for what the connection waits for
//!   on it ([`Relay::waits`]: reading while a direction can take bytes,
//!   writing only while a write is blocked), and remembers whether it may
//!   be read or written. An operation is tried only when it may succeed. A
//!   read that returns less than asked has drained the socket: the next
//!   readiness report says when there is more, so no read is spent on
//!   hearing EAGAIN.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::task::{Poll, ready};
use std::time::Duration;

use async_io::Async;
use socket2::Socket;

use crate::pipe::{self, Pipe};

/// How many bytes the copy path moves per read.
const CHUNK: usize = 64 * 1024;
/// After a message below this, the next is copied rather than spliced: a
/// read and a write through a buffer on the stack cost less than two
/// splices through a pipe (page references, pipe locking) for a few bytes.
/// Bulk transfers arrive in larger pieces even when the relay keeps up, so
/// any read of this much or more goes back to splicing (measured:
/// docs/bench-profile.md, "Small messages copied").
const COPY_BELOW: usize = 1024;
/// The stack buffer of the copy path.
const SMALL: usize = 16 * 1024;

/// How a relayed connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both sides ended their sending; everything was delivered.
    Done,
    /// `--idle-timeout` elapsed with no byte in either direction.
    Idle,
    /// A reset or error on one side; both were closed.
    Failed(io::Error),
    /// Handed to the next instance of the relay (`crate::handover`), which
    /// goes on with it.
    HandedOver,
    /// Cut at the end of a drain or a hand-over (a reset towards TCP peers).
    Cut,
}

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// From the client to CONNECT.
    pub up: u64,
    /// From CONNECT to the client.
    pub down: u64,
}

/// One side of a connection: its socket, what its last readiness events
/// said (whether a read or a write may make progress: set by the engine
/// from readiness events, cleared by a short read or an operation that
/// returns EAGAIN), and what the engine watches it for.
pub struct Side {
    socket: Socket,
    readable: Cell<bool>,
    writable: Cell<bool>,
    /// What the engine watches this socket for, (read, write); `None` once
    /// it no longer watches it at all (it hung up or failed).
    interest: Cell<Option<(bool, bool)>>,
}

impl Side {
    /// A socket that has not been tried yet: both may succeed.
    pub fn new(socket: Socket) -> Side {
        Side {
            socket,
            readable: Cell::new(true),
            writable: Cell::new(true),
            interest: Cell::new(Some(Side::REGISTERED)),
        }
    }

    /// What a socket is registered for at first: reading.
    pub const REGISTERED: (bool, bool) = (true, false);

    /// The socket is registered afresh (with [`Side::REGISTERED`]): what
    /// was known of it belongs to a registration that is gone (a connection
    /// taken off the engine for a hand-over, and given back), so every
    /// operation is tried again and the interest follows from there.
    pub fn registered(&self) {
        self.interest.set(Some(Side::REGISTERED));
        self.readable.set(true);
        self.writable.set(true);
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// What an event said: readable, writable (an error or hang-up counts
    /// as both, so that the next operation reports it).
    pub fn mark(&self, readable: bool, writable: bool) {
        if readable {
            self.readable.set(true);
        }
        if writable {
            self.writable.set(true);
        }
    }

    /// `Some((read, write))` when the engine should watch this socket for
    /// something else than it does: `wanted`, from [`Relay::waits`].
    pub fn interest_change(&self, wanted: (bool, bool)) -> Option<(bool, bool)> {
        let now = self.interest.get()?;
        (now != wanted).then(|| {
            self.interest.set(Some(wanted));
            wanted
        })
    }

    /// The engine stopped watching this socket: it hung up or failed, and
    /// level-triggered readiness would report that for ever. From now on
    /// every operation on it is tried: it returns what is left, the end or
    /// the error, never EAGAIN.
    pub fn unwatched(&self) {
        self.interest.set(None);
        self.readable.set(true);
        self.writable.set(true);
    }

    /// Whether the engine still watches this socket.
    pub fn watched(&self) -> bool {
        self.interest.get().is_some()
    }

    /// A read returned less than asked: the socket is drained (or the pipe
    /// ran out of slots), and readiness says when there is more. A socket
    /// no longer watched is always tried: it hung up or failed, so a read
    /// returns what is left, the end or the error, never EAGAIN.
    fn drained(&self) {
        if self.watched() {
            self.readable.set(false);
        }
    }

    /// The socket is drained: wait for the next readiness report.
    fn read_blocked(&self) -> Poll<io::Result<()>> {
        self.readable.set(false);
        Poll::Pending
    }

    /// The socket is full: wait for the next readiness report.
    fn write_blocked(&self) -> Poll<io::Result<()>> {
        self.writable.set(false);
        Poll::Pending
    }
}

/// Relays between `client` and `backend` until both directions are done,
/// then closes both.
pub fn relay(client: Socket, backend: Socket) -> Relay {
    Relay {
        client: Side::new(client),
        backend: Side::new(backend),
        up: Direction::default(),
        down: Direction::default(),
    }
}

/// One connection being relayed: [`Relay::step`] moves what can be moved
/// and says when it is over.
pub struct Relay {
    pub client: Side,
    pub backend: Side,
    /// Client → backend.
    up: Direction,
    /// Backend → client.
    down: Direction,
}

/// One direction's state.
#[derive(Default)]
struct Direction {
    /// Bytes moved so far.
    moved: u64,
    /// What holds bytes read but not yet written.
    held: Held,
    /// How the next read moves bytes.
    moving: Moving,
    /// EOF was seen and passed on as a half-close.
    done: bool,
}

/// What holds a direction's bytes in flight (read, not yet written).
#[derive(Default)]
enum Held {
    /// Nothing is in flight: the direction reads next.
    #[default]
    Nothing,
    /// `len` bytes sit in this pipe.
    Pipe { pipe: Pipe, len: u32 },
    /// `start..end` of this buffer is unsent.
    Buffer {
        buffer: Box<[u8]>,
        start: u32,
        end: u32,
    },
}

/// How a direction's next read moves bytes. What it holds is written the
/// way it was read; only this says what comes after.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Moving {
    /// Spliced through a pipe from the pool (the start).
    #[default]
    Splice,
    /// The last message was small: the next is copied through a buffer on
    /// the stack, and its size decides how the one after moves (see
    /// [`COPY_BELOW`]).
    CopySmall,
    /// No pipe could be had: one read through a buffer, then splice again.
    CopyOnce,
    /// Splice does not apply to these sockets: every read goes through a
    /// buffer, for good.
    CopyAlways,
}

impl Moving {
    /// How bytes move after a message of `len` bytes went through a pipe or
    /// the stack buffer.
    fn after(len: usize) -> Moving {
        if len < COPY_BELOW {
            Moving::CopySmall
        } else {
            Moving::Splice
        }
    }
}

/// One direction of a connection taken apart for the next instance, or put
/// together again from what it stored.
pub struct Half {
    /// Bytes moved so far.
    pub moved: u64,
    /// EOF was seen and passed on as a half-close.
    pub ended: bool,
    /// Splice does not apply to these sockets: bytes go through a buffer.
    pub copying: bool,
    /// Bytes read but not yet written.
    pub in_flight: InFlight,
}

/// Where a direction's bytes in flight are, outside the relay.
pub enum InFlight {
    Nothing,
    /// `len` bytes in this pipe.
    Pipe(Pipe, u32),
    Bytes(Box<[u8]>),
}

impl Direction {
    /// What a hand-over keeps: what is held, and whether copying is for
    /// good (a small message's copy and a copy for want of a pipe are not
    /// kept: the next instance splices first).
    fn into_half(self) -> Half {
        let in_flight = match self.held {
            Held::Nothing => InFlight::Nothing,
            Held::Pipe { pipe, len } => InFlight::Pipe(pipe, len),
            Held::Buffer { buffer, start, end } => {
                InFlight::Bytes(buffer[start as usize..end as usize].into())
            }
        };
        Half {
            moved: self.moved,
            ended: self.done,
            copying: self.moving == Moving::CopyAlways,
            in_flight,
        }
    }

    fn from_half(half: Half) -> Direction {
        let copying = if half.copying {
            Moving::CopyAlways
        } else {
            Moving::Splice
        };
        let (held, moving) = match half.in_flight {
            InFlight::Nothing => (Held::Nothing, copying),
            // A copying direction's bytes travel in a pipe too (a buffer
            // cannot be stored): spliced out, then copied again.
            InFlight::Pipe(pipe, len) => (Held::Pipe { pipe, len }, copying),
            InFlight::Bytes(buffer) if buffer.is_empty() => (Held::Nothing, copying),
            InFlight::Bytes(buffer) => (
                Held::Buffer {
                    end: buffer.len() as u32,
                    buffer,
                    start: 0,
                },
                copying,
            ),
        };
        Direction {
            moved: half.moved,
            held,
            moving,
            done: half.ended,
        }
    }
}

impl Relay {
    /// Takes the connection apart: client, backend, up (client → backend)
    /// and down.
    pub fn into_halves(self) -> (Socket, Socket, Half, Half) {
        (
            self.client.socket,
            self.backend.socket,
            self.up.into_half(),
            self.down.into_half(),
        )
    }

    /// Puts a connection together again where [`Relay::into_halves`] left
    /// it: the first step tries every operation.
    pub fn from_halves(client: Socket, backend: Socket, up: Half, down: Half) -> Relay {
        Relay {
            client: Side::new(client),
            backend: Side::new(backend),
            up: Direction::from_half(up),
            down: Direction::from_half(down),
        }
    }

    /// What the connection waits for on each socket, (read, write), client
    /// first: reading where a direction can take bytes (nothing in flight,
    /// not ended), writing where a write is blocked.
    pub fn waits(&self) -> [(bool, bool); 2] {
        let reading = |d: &Direction| !d.done && matches!(d.held, Held::Nothing);
        [
            (reading(&self.up), !self.client.writable.get()),
            (reading(&self.down), !self.backend.writable.get()),
        ]
    }

    /// Directions with bytes in flight: pipes a hand-over stores.
    pub fn pipes_needed(&self) -> usize {
        [&self.up, &self.down]
            .into_iter()
            .filter(|d| !matches!(d.held, Held::Nothing))
            .count()
    }

    /// Bytes moved so far, both ways.
    pub fn moved(&self) -> u64 {
        self.up.moved + self.down.moved
    }

    /// Bytes moved in each direction.
    pub fn totals(&self) -> Totals {
        Totals {
            up: self.up.moved,
            down: self.down.moved,
        }
    }

    /// Moves every byte that can move now; `Some` once the connection is
    /// over (both directions ended, or a reset or error on either side).
    pub fn step(&mut self) -> Option<Outcome> {
        let up = self.up.poll(&self.client, &self.backend);
        let down = self.down.poll(&self.backend, &self.client);
        let outcome = match (up, down) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Outcome::Failed(e),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Outcome::Done,
            _ => return None,
        };
        if matches!(outcome, Outcome::Failed(_)) {
            // Close with a reset rather than a FIN so the other side sees
            // an abort, not a clean end of stream.
            self.abort();
        }
        Some(outcome)
    }

    /// Closes both sockets with a clean end of stream, even if they were
    /// made a reset before (an adopted connection keeps `SO_LINGER` 0 until
    /// systemd's store has forgotten it).
    pub fn close_cleanly(self) {
        for side in [&self.client, &self.backend] {
            let _ = side.socket.set_linger(None);
        }
    }

    /// Makes closing both sockets a reset (`SO_LINGER` 0).
    pub fn abort(&self) {
        for side in [&self.client, &self.backend] {
            let _ = side.socket.set_linger(Some(Duration::ZERO));
        }
    }
}

impl Direction {
    /// Moves bytes `from` → `to` until EOF (then half-closes `to`), an
    /// error, or nothing can move now.
    fn poll(&mut self, from: &Side, to: &Side) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        ready!(self.pump(from, to))?;
        self.done = true;
        match to.socket.shutdown(Shutdown::Write) {
            // The other side may already be gone entirely; the other
            // direction will notice.
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Ready(Ok) at EOF with nothing left in flight.
    fn pump(&mut self, from: &Side, to: &Side) -> Poll<io::Result<()>> {
        let (source, sink) = (&from.socket, &to.socket);
        loop {
            let reading = matches!(self.held, Held::Nothing);
            // Only what may succeed is tried: no EAGAIN for the asking
            // (readiness says when a drained socket has more).
            if reading && !from.readable.get() || !reading && !to.writable.get() {
                return Poll::Pending;
            }
            match (&mut self.held, self.moving) {
                (Held::Nothing, Moving::CopySmall) => {
                    // Not zeroed: the read fills what is used.
                    let mut space = [MaybeUninit::<u8>::uninit(); SMALL];
                    let buffer = loop {
                        match rustix::io::read(&from.socket, &mut space) {
                            Ok(([], _)) => return Poll::Ready(Ok(())),
                            Ok((buffer, _)) => break &*buffer,
                            Err(rustix::io::Errno::INTR) => {}
                            Err(rustix::io::Errno::AGAIN) => return from.read_blocked(),
                            Err(e) => return Poll::Ready(Err(e.into())),
                        }
                    };
                    let read = buffer.len();
                    if read < SMALL {
                        from.drained();
                    }
                    self.moving = Moving::after(read);
                    let written = match retry(|| (&to.socket).write(&buffer[..read])) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(written) => written,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    self.moved += written as u64;
                    if written < read {
                        // The rest waits in a buffer of its own.
                        self.held = Held::Buffer {
                            buffer: buffer[written..read].into(),
                            start: 0,
                            end: (read - written) as u32,
                        };
                        return to.write_blocked();
                    }
                }
                (Held::Nothing, Moving::Splice) => {
                    let Some(pipe) = pipe::take() else {
                        // No pipe to splice through (none worth having, or
                        // descriptors are short): a buffer, this once.
                        self.moving = Moving::CopyOnce;
                        continue;
                    };
                    match retry(|| pipe::splice(source, pipe.write_end(), pipe.capacity())) {
                        Ok(0) => {
                            pipe::give(pipe);
                            return Poll::Ready(Ok(()));
                        }
                        Ok(len) => {
                            if len < pipe.capacity() {
                                from.drained();
                            }
                            self.moving = Moving::after(len);
                            self.held = Held::Pipe {
                                pipe,
                                len: len as u32,
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            pipe::give(pipe);
                            return from.read_blocked();
                        }
                        // Not spliceable (not a socket the kernel can splice).
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.moved == 0 => {
                            pipe::give(pipe);
                            self.moving = Moving::CopyAlways;
                        }
                        Err(e) => {
                            pipe::give(pipe);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                (Held::Pipe { pipe, len }, _) => {
                    match retry(|| pipe::splice(pipe.read_end(), sink, *len as usize)) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            self.moved += n as u64;
                            *len -= n as u32;
                            if *len == 0 {
                                let Held::Pipe { pipe, .. } = std::mem::take(&mut self.held) else {
                                    unreachable!("matched above")
                                };
                                pipe::give(pipe);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return to.write_blocked();
                        }
                        // The pipe still holds bytes: it is dropped, not pooled.
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                (Held::Nothing, moving @ (Moving::CopyOnce | Moving::CopyAlways)) => {
                    let mut buffer = vec![0; CHUNK].into_boxed_slice();
                    match retry(|| (&from.socket).read(&mut buffer)) {
                        Ok(0) => return Poll::Ready(Ok(())),
                        Ok(end) => {
                            if end < CHUNK {
                                from.drained();
                            }
                            if moving == Moving::CopyOnce {
                                self.moving = Moving::Splice;
                            }
                            self.held = Held::Buffer {
                                buffer,
                                start: 0,
                                end: end as u32,
                            }
                        }
                        // The buffer is dropped: idle connections hold none.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return from.read_blocked();
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                (Held::Buffer { buffer, start, end }, _) => {
                    match retry(|| (&to.socket).write(&buffer[*start as usize..*end as usize])) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            self.moved += n as u64;
                            *start += n as u32;
                            if start == end {
                                self.held = Held::Nothing;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return to.write_blocked();
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
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
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A relay between two socket pairs, driven as the engine drives it:
    /// each step after every socket was reported ready. The test holds the
    /// client's and the backend's far ends.
    struct Bench {
        relay: Relay,
        client: UnixStream,
        backend: UnixStream,
    }

    impl Bench {
        fn new() -> Bench {
            let (client, near_client) = UnixStream::pair().unwrap();
            let (backend, near_backend) = UnixStream::pair().unwrap();
            for near in [&near_client, &near_backend] {
                near.set_nonblocking(true).unwrap();
            }
            Bench {
                relay: relay(
                    Socket::from(OwnedFd::from(near_client)),
                    Socket::from(OwnedFd::from(near_backend)),
                ),
                client,
                backend,
            }
        }

        /// One engine wake-up: both sockets ready, one step.
        fn step(&mut self) -> Option<Outcome> {
            self.relay.client.mark(true, true);
            self.relay.backend.mark(true, true);
            self.relay.step()
        }

        /// Steps until the far end `from` has `len` bytes to read (reading
        /// them), or the relay ends.
        fn deliver(&mut self, to_backend: bool, len: usize) -> Vec<u8> {
            let mut got = Vec::new();
            let mut buffer = [0u8; 65536];
            for _ in 0..100_000 {
                if got.len() >= len {
                    break;
                }
                assert!(self.step().is_none(), "ended early");
                let far = if to_backend {
                    &mut self.backend
                } else {
                    &mut self.client
                };
                far.set_nonblocking(true).unwrap();
                match far.read(&mut buffer) {
                    Ok(n) => got.extend_from_slice(&buffer[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            got
        }
    }

    use std::os::fd::OwnedFd;

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn bytes_and_half_closes_travel_in_either_order() {
        for client_first in [true, false] {
            let mut bench = Bench::new();
            bench.client.write_all(b"question").unwrap();
            bench.backend.write_all(b"answer").unwrap();
            assert_eq!(bench.deliver(true, 8), b"question");
            assert_eq!(bench.deliver(false, 6), b"answer");
            let (client, backend) = (
                bench.client.try_clone().unwrap(),
                bench.backend.try_clone().unwrap(),
            );
            let (mut first, mut second) = if client_first {
                (client, backend)
            } else {
                (backend, client)
            };
            first.shutdown(Shutdown::Write).unwrap();
            // The half-close reaches the other side; that direction goes on.
            for _ in 0..10 {
                assert!(bench.step().is_none(), "one direction still open");
            }
            let mut rest = Vec::new();
            second.set_nonblocking(false).unwrap();
            second
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            second
                .read_to_end(&mut rest)
                .expect("the half-close passed on");
            assert!(rest.is_empty(), "an end of stream, after every byte");
            second.write_all(b"late").unwrap();
            second.shutdown(Shutdown::Write).unwrap();
            let outcome = (0..10).find_map(|_| bench.step());
            assert!(matches!(outcome, Some(Outcome::Done)), "{outcome:?}");
            let mut late = Vec::new();
            first.set_nonblocking(false).unwrap();
            first.read_to_end(&mut late).unwrap();
            assert_eq!(late, b"late");
            let totals = bench.relay.totals();
            let expected = if client_first { (8, 10) } else { (12, 6) };
            assert_eq!((totals.up, totals.down), expected);
        }
    }

    #[test]
    fn a_reader_that_lags_gets_every_byte_in_order() {
        let mut bench = Bench::new();
        let data = payload(4 << 20, 9);
        let writer = {
            let mut client = bench.client.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || client.write_all(&data).unwrap())
        };
        // The backend reads in small pieces: writes towards it block, the
        // pipe and the buffers fill, and the relay waits for room.
        let mut got = Vec::new();
        let mut buffer = [0u8; 1000];
        bench.backend.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < data.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {} bytes arrived",
                got.len(),
                data.len()
            );
            assert!(bench.step().is_none());
            if let Ok(n) = bench.backend.read(&mut buffer) {
                got.extend_from_slice(&buffer[..n]);
            }
        }
        writer.join().unwrap();
        assert!(got == data, "every byte, once, in order");
        assert_eq!(bench.relay.totals().up, data.len() as u64);
    }

    #[test]
    fn a_peer_that_vanishes_with_bytes_unread_fails_the_connection() {
        let mut bench = Bench::new();
        bench.backend.write_all(b"x").unwrap();
        assert_eq!(bench.deliver(false, 1), b"x");
        // The backend sends more, and the client goes away without reading
        // it: the relay's writes towards it fail.
        bench.backend.write_all(&payload(64 << 10, 1)).unwrap();
        for _ in 0..3 {
            let _ = bench.step();
        }
        drop(std::mem::replace(
            &mut bench.client,
            UnixStream::pair().unwrap().0,
        ));
        let outcome = (0..100).find_map(|_| bench.step());
        assert!(matches!(outcome, Some(Outcome::Failed(_))), "{outcome:?}");
    }

    /// A direction that copies (splice does not apply to its sockets) and
    /// had bytes in flight at a hand-over gets them back in a pipe, and
    /// goes on copying: a splice from its socket would fail it.
    #[test]
    fn a_copying_direction_stays_copying_across_a_hand_over() {
        let pipe = crate::pipe::filled(b"in flight").unwrap();
        let half = Half {
            moved: 7,
            ended: false,
            copying: true,
            in_flight: InFlight::Pipe(pipe, 9),
        };
        let direction = Direction::from_half(half);
        assert_eq!(direction.moving, Moving::CopyAlways);
        let again = direction.into_half();
        assert!(again.copying, "the next hand-over still says copying");
        assert!(matches!(again.in_flight, InFlight::Pipe(_, 9)));
    }

    /// An idle connection must cost little: the relay state is kept small.
    #[test]
    fn relay_state_is_small() {
        let (a, b) = Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        let relay = relay(a, b);
        assert!(
            std::mem::size_of_val(&relay) <= 256,
            "{} bytes",
            std::mem::size_of_val(&relay)
        );
    }
}
