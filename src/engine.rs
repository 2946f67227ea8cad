//! The thread that moves the bytes. Every relayed connection's two sockets
//! are registered once with an epoll instance of this thread's own,
//! level-triggered, for what the connection waits for on them (changed
//! only when that changes: when a write blocks or a direction ends), and
//! the thread sleeps in one `epoll_wait` until something happens: per
//! message, one wait, one read and one write (two splices, or a copy), and
//! no read that only hears EAGAIN (a short read has drained the socket; the
//! next wait reports more). The async runtime's reactor would add system
//! calls to each round trip: one-shot registrations re-armed for every
//! wait, a timerfd set for every sleep, a wake-up descriptor to drain
//! (measured: docs/bench-profile.md, "Since the engine").
//!
//! The accept loop, limits, connecting and the PROXY header stay on the
//! runtime; a connection comes here once both sockets exist, and its task
//! waits for it to end. The thread starts before the first accept (its
//! descriptors do not compete with clients'), after the sandbox (it is
//! confined like every other).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};

use crate::relay::{Outcome, Relay, Totals};

/// What the engine is asked to do.
enum Command {
    /// Relay a connection.
    Relay(Job),
    /// Stop moving bytes and hand every connection back (`crate::handover`).
    HandOver(async_channel::Sender<Vec<Taken>>),
    /// Say that the thread goes on (for the watchdog).
    Ping(async_channel::Sender<()>),
    /// Cut every connection (a reset towards TCP peers), and say how many.
    CutAll(async_channel::Sender<usize>),
    /// systemd's store has forgotten the adopted connections: their sockets
    /// may close with a clean end of stream from now on.
    StoreForgot,
}

/// A connection for the engine, and where to say how it ended.
struct Job {
    relay: Relay,
    idle_timeout: Option<Duration>,
    /// When the connection began (for a connection handed over by another
    /// instance, before this one started).
    started: Instant,
    /// When a byte last moved (likewise).
    last_moved: Instant,
    /// Handed over by the previous instance: a copy of its sockets may
    /// still be in systemd's store (see [`Closing`]).
    adopted: bool,
    done: Done,
}

/// A connection taken off the engine for the next instance.
pub struct Taken {
    pub relay: Relay,
    pub started: Instant,
    /// When a byte last moved, where the engine kept track (`--idle-timeout`).
    pub last_moved: Option<Instant>,
}

/// Where the engine puts how a connection ended, and the waker of the task
/// that waits for it: one small allocation per connection.
struct Done(Arc<Mutex<Completion>>);

#[derive(Default)]
struct Completion {
    ended: Option<Ended>,
    waker: Option<Waker>,
    /// The engine let go without an answer (its thread is gone).
    abandoned: bool,
}

impl Done {
    fn complete(self, ended: Ended) {
        let mut completion = self.0.lock().expect("not poisoned");
        completion.ended = Some(ended);
        if let Some(waker) = completion.waker.take() {
            waker.wake();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let mut completion = self.0.lock().expect("not poisoned");
        if completion.ended.is_none() {
            completion.abandoned = true;
            if let Some(waker) = completion.waker.take() {
                waker.wake();
            }
        }
    }
}

/// How a connection ended. Its sockets stay with the engine, which closed
/// them (or, for an adopted connection the store may still hold, keeps
/// them until it has forgotten them).
pub struct Ended {
    pub totals: Totals,
    pub outcome: Outcome,
}

/// The engine's inbox: jobs, and a descriptor that wakes it.
struct Inbox {
    jobs: Mutex<mpsc::Sender<Command>>,
    wake: OwnedFd,
}

static INBOX: OnceLock<Inbox> = OnceLock::new();

/// The events that say what a socket is watched for, (read, write):
/// readable (and the peer's end of sending), writable. Errors and hang-ups
/// are reported whatever the interest.
fn events((read, write): (bool, bool)) -> EventFlags {
    let mut flags = EventFlags::empty();
    if read {
        flags |= EventFlags::IN | EventFlags::RDHUP;
    }
    if write {
        flags |= EventFlags::OUT;
    }
    flags
}

/// The event data of the wake-up descriptor; a connection's sockets carry
/// its [`Key`] and which side they are.
const WAKE: u64 = u64::MAX;

/// A connection's slot and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    slot: u32,
    generation: u32,
}

impl Key {
    fn event_data(self, backend: bool) -> EventData {
        EventData::new_u64(
            (u64::from(self.slot) << 32 | u64::from(self.generation)) << 1 | u64::from(backend),
        )
    }

    fn from_event_data(data: u64) -> (Key, bool) {
        let key = data >> 1;
        (
            Key {
                slot: (key >> 32) as u32,
                generation: key as u32 & 0x7fff_ffff,
            },
            data & 1 == 1,
        )
    }
}

/// Relays a connection on the engine thread until it ends
/// (`idle_timeout`: no byte either way for that long, counted from
/// `last_moved`), is cut, or is handed over; the engine owns it from now on
/// and closes it. `adopted`: handed over by the previous instance, so that
/// it ends cleanly only once the store has forgotten it ([`store_forgot`]).
/// The connection goes to the engine at once; the future only waits, and is
/// small (it is paid for each held connection).
pub fn relay(
    relay: Relay,
    (started, last_moved): (Instant, Instant),
    idle_timeout: Option<Duration>,
    adopted: bool,
) -> impl std::future::Future<Output = io::Result<Ended>> {
    let completion = Arc::new(Mutex::new(Completion::default()));
    let sent = send(Command::Relay(Job {
        relay,
        idle_timeout,
        started,
        last_moved,
        adopted,
        done: Done(completion.clone()),
    }));
    async move {
        sent?;
        ended(&completion).await
    }
}

/// Waits for the engine to say how a connection ended.
async fn ended(completion: &Mutex<Completion>) -> io::Result<Ended> {
    futures_lite::future::poll_fn(|cx| {
        let mut state = completion.lock().expect("not poisoned");
        if let Some(ended) = state.ended.take() {
            return Poll::Ready(Ok(ended));
        }
        if state.abandoned {
            return Poll::Ready(Err(io::Error::other("the relay engine is gone")));
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Stops moving bytes and takes every connection off the engine, with
/// what it has in flight; their tasks learn [`Outcome::HandedOver`].
pub async fn hand_over() -> io::Result<Vec<Taken>> {
    ask(Command::HandOver).await
}

/// Resolves once the engine thread has shown that it runs (it answered in
/// its loop), or with an error if it is gone.
pub async fn alive() -> io::Result<()> {
    ask(Command::Ping).await
}

/// Cuts every connection the engine relays: their sockets close with a
/// reset towards TCP peers, so that a peer never mistakes a cut stream for
/// a complete one (a Unix peer sees ECONNRESET only if it had sent bytes
/// that were not read, and otherwise an end of stream); how many.
pub async fn cut_all() -> io::Result<usize> {
    ask(Command::CutAll).await
}

/// Tells the engine that systemd has forgotten the adopted connections
/// (or never held them): they may end with a clean end of stream.
pub fn store_forgot() -> io::Result<()> {
    send(Command::StoreForgot)
}

/// Sends the engine a command that answers, and waits for the answer.
async fn ask<T>(command: impl FnOnce(async_channel::Sender<T>) -> Command) -> io::Result<T> {
    let (sender, receiver) = async_channel::bounded(1);
    send(command(sender))?;
    receiver
        .recv()
        .await
        .map_err(|_| io::Error::other("the relay engine is gone"))
}

fn send(command: Command) -> io::Result<()> {
    let inbox = INBOX
        .get()
        .ok_or_else(|| io::Error::other("the relay engine is not running"))?;
    inbox
        .jobs
        .lock()
        .expect("not poisoned")
        .send(command)
        .map_err(|_| io::Error::other("the relay engine is gone"))?;
    rustix::io::write(&inbox.wake, &1u64.to_ne_bytes())?;
    Ok(())
}

/// Starts the engine thread, once, before the first accept: its
/// descriptors must not compete with clients'. Call after the sandbox, so
/// that the thread is confined too.
pub fn start() -> io::Result<()> {
    if INBOX.get().is_some() {
        return Ok(());
    }
    let _ = INBOX.set(spawn()?);
    Ok(())
}

fn spawn() -> io::Result<Inbox> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let wake = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?;
    epoll::add(&epoll, &wake, EventData::new_u64(WAKE), EventFlags::IN)?;
    let (jobs, inbox) = mpsc::channel();
    let wake_for_thread = wake.try_clone()?;
    std::thread::Builder::new()
        .name("relay-io".into())
        .spawn(move || {
            Engine::new(epoll, wake_for_thread, inbox).run();
            // No thread may stop while the process looks healthy: the
            // connections are gone with it, and so is the relay.
            crate::error!("the relay engine stopped: exiting");
            std::process::exit(1);
        })?;
    Ok(Inbox {
        jobs: Mutex::new(jobs),
        wake,
    })
}

/// Test builds only: `SIMPLETCPUNIXRELAY_TEST_ENGINE=panic` or `hang` makes
/// the engine thread fail at its first connection, as a bug would, so that
/// the tests can show what the rest of the process does then.
#[cfg(debug_assertions)]
fn test_fault() {
    match std::env::var("SIMPLETCPUNIXRELAY_TEST_ENGINE").as_deref() {
        Ok("panic") => panic!("a test asked the engine to fail"),
        Ok("hang") => loop {
            std::thread::park();
        },
        _ => {}
    }
}

/// One connection on the engine.
struct Connection {
    relay: Relay,
    done: Done,
    started: Instant,
    /// Boxed: most connections have no idle timeout.
    idle: Option<Box<Idle>>,
    /// Tells this connection from an earlier one in the same slot.
    generation: u32,
    adopted: bool,
}

/// `--idle-timeout`: the span, and when a byte last moved.
struct Idle {
    span: Duration,
    last: Instant,
    moved: u64,
}

struct Engine {
    epoll: OwnedFd,
    wake: OwnedFd,
    inbox: mpsc::Receiver<Command>,
    /// By slot; boxed, so that a free slot costs a pointer.
    connections: Vec<Option<Box<Connection>>>,
    free: Vec<u32>,
    generation: u32,
    /// Idle deadlines to check, earliest first (checked lazily: a deadline
    /// whose connection moved bytes meanwhile is pushed again, later).
    deadlines: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Whether systemd's store has forgotten the adopted connections.
    store_forgot: bool,
    /// Adopted connections that ended cleanly before the store forgot
    /// them: their sockets keep `SO_LINGER` 0 (a crash now is a reset, as
    /// the copy in the store would be) and close cleanly once it has.
    closing: Vec<Relay>,
}

impl Engine {
    fn new(epoll: OwnedFd, wake: OwnedFd, inbox: mpsc::Receiver<Command>) -> Engine {
        Engine {
            epoll,
            wake,
            inbox,
            connections: Vec::new(),
            free: Vec::new(),
            generation: 0,
            deadlines: BinaryHeap::new(),
            store_forgot: false,
            closing: Vec::new(),
        }
    }

    fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            let timeout = self.deadlines.peek().map(|Reverse((at, _))| {
                let left = at.saturating_duration_since(Instant::now());
                rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: left.subsec_nanos() as i64,
                }
            });
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    crate::error!("relay engine: epoll_wait failed: {e}");
                    return;
                }
            }
            for event in events.iter() {
                let key = event.data.u64();
                if key == WAKE {
                    self.take_jobs();
                    continue;
                }
                let (id, backend) = Key::from_event_data(key);
                let Some(connection) = self.get(id) else {
                    continue;
                };
                let flags = event.flags;
                let trouble = flags.intersects(EventFlags::ERR | EventFlags::HUP);
                let readable = trouble || flags.intersects(EventFlags::IN | EventFlags::RDHUP);
                let writable = trouble || flags.contains(EventFlags::OUT);
                let side = if backend {
                    &connection.relay.backend
                } else {
                    &connection.relay.client
                };
                side.mark(readable, writable);
                self.step(id, trouble.then_some(backend));
            }
            self.check_deadlines();
        }
    }

    /// Registers the connections the runtime handed over.
    fn take_jobs(&mut self) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut counter);
        while let Ok(command) = self.inbox.try_recv() {
            let job = match command {
                Command::Relay(job) => job,
                Command::HandOver(reply) => {
                    let _ = reply.send_blocking(self.hand_over());
                    continue;
                }
                Command::Ping(reply) => {
                    let _ = reply.try_send(());
                    continue;
                }
                Command::CutAll(reply) => {
                    let _ = reply.try_send(self.cut_all());
                    continue;
                }
                Command::StoreForgot => {
                    self.store_forgot = true;
                    for relay in self.closing.drain(..) {
                        relay.close_cleanly();
                    }
                    continue;
                }
            };
            #[cfg(debug_assertions)]
            test_fault();
            // 31 bits: the generation shares the event data with the slot.
            self.generation = self.generation.wrapping_add(1) & 0x7fff_ffff;
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.connections.push(None);
                    (self.connections.len() - 1) as u32
                }
            };
            let id = Key {
                slot,
                generation: self.generation,
            };
            // Reading at first; the first step adjusts that to what the
            // connection waits for (`Relay::waits`).
            job.relay.client.registered();
            job.relay.backend.registered();
            let flags = events(crate::relay::Side::REGISTERED);
            let registered = epoll::add(
                &self.epoll,
                job.relay.client.socket(),
                id.event_data(false),
                flags,
            )
            .and_then(|()| {
                epoll::add(
                    &self.epoll,
                    job.relay.backend.socket(),
                    id.event_data(true),
                    flags,
                )
            });
            let idle = job.idle_timeout.map(|span| {
                // A span beyond what the clock can count never ends.
                if let Some(at) = job.last_moved.checked_add(span) {
                    self.deadlines.push(Reverse((at, id)));
                }
                Box::new(Idle {
                    span,
                    last: job.last_moved,
                    moved: job.relay.moved(),
                })
            });
            self.connections[slot as usize] = Some(Box::new(Connection {
                relay: job.relay,
                done: job.done,
                started: job.started,
                idle,
                generation: id.generation,
                adopted: job.adopted,
            }));
            if let Err(e) = registered {
                if let Some(connection) = self.get(id) {
                    connection.relay.abort();
                }
                self.finish(id, Outcome::Failed(e.into()));
                continue;
            }
            // Bytes may have arrived before the registration: try at once.
            self.step(id, None);
        }
    }

    /// The live connection with this key.
    fn get(&mut self, id: Key) -> Option<&mut Connection> {
        self.connections
            .get_mut(id.slot as usize)?
            .as_deref_mut()
            .filter(|c| c.generation == id.generation)
    }

    /// Moves what can move on one connection; `trouble`: the side (backend
    /// or not) whose event reported an error or hang-up.
    fn step(&mut self, id: Key, trouble: Option<bool>) {
        let epoll = &self.epoll;
        let Some(connection) = self
            .connections
            .get_mut(id.slot as usize)
            .and_then(|c| c.as_deref_mut().filter(|c| c.generation == id.generation))
        else {
            return;
        };
        let mut outcome = connection.relay.step();
        if outcome.is_none()
            && let Some(backend) = trouble
        {
            let side = if backend {
                &connection.relay.backend
            } else {
                &connection.relay.client
            };
            if side.watched() {
                // Still going (a half-closed peer that hung up, say), and
                // level-triggered readiness would report the hang-up for
                // ever: the socket is no longer watched, and is tried again
                // now (what is left, its end or its error come next).
                let _ = epoll::delete(epoll, side.socket());
                side.unwatched();
                outcome = connection.relay.step();
            }
        }
        if outcome.is_none() {
            let waits = connection.relay.waits();
            for ((side, backend), wanted) in [
                (&connection.relay.client, false),
                (&connection.relay.backend, true),
            ]
            .into_iter()
            .zip(waits)
            {
                if let Some(wanted) = side.interest_change(wanted)
                    && let Err(e) =
                        epoll::modify(epoll, side.socket(), id.event_data(backend), events(wanted))
                {
                    outcome.get_or_insert(Outcome::Failed(e.into()));
                }
            }
        }
        if let Some(idle) = &mut connection.idle {
            let moved = connection.relay.moved();
            if moved != idle.moved {
                idle.moved = moved;
                idle.last = Instant::now();
            }
        }
        if let Some(outcome) = outcome {
            self.finish(id, outcome);
        }
    }

    /// Closes connections that stayed idle past their `--idle-timeout`.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                return;
            }
            self.deadlines.pop();
            let Some(connection) = self.get(id) else {
                continue;
            };
            let Some(idle) = &connection.idle else {
                continue;
            };
            match idle.last.checked_add(idle.span) {
                Some(due) if due <= now => self.finish(id, Outcome::Idle),
                Some(due) => self.deadlines.push(Reverse((due, id))),
                None => {}
            }
        }
    }

    /// Deregisters a connection, closes it and says how it ended.
    fn finish(&mut self, id: Key, outcome: Outcome) {
        let Some(connection) = self.remove(id) else {
            return;
        };
        let relay = connection.relay;
        let totals = relay.totals();
        let clean = matches!(outcome, Outcome::Done | Outcome::Idle);
        match (clean, connection.adopted) {
            (true, true) if !self.store_forgot => self.closing.push(relay),
            (true, true) => relay.close_cleanly(),
            // A failed or cut connection was made a reset already.
            _ => drop(relay),
        }
        connection.done.complete(Ended { totals, outcome });
    }

    /// Cuts every connection (see [`cut_all`]); how many.
    fn cut_all(&mut self) -> usize {
        let keys = self.keys();
        for &id in &keys {
            if let Some(connection) = self.get(id) {
                connection.relay.abort();
            }
            self.finish(id, Outcome::Cut);
        }
        keys.len()
    }

    /// The keys of every connection on the engine.
    fn keys(&self) -> Vec<Key> {
        (0..self.connections.len() as u32)
            .filter_map(|slot| {
                let generation = self.connections[slot as usize].as_ref()?.generation;
                Some(Key { slot, generation })
            })
            .collect()
    }

    /// Takes a connection off the engine.
    fn remove(&mut self, id: Key) -> Option<Connection> {
        self.get(id)?;
        let connection = *self.connections[id.slot as usize].take()?;
        self.free.push(id.slot);
        let relay = &connection.relay;
        let _ = epoll::delete(&self.epoll, relay.client.socket().as_fd());
        let _ = epoll::delete(&self.epoll, relay.backend.socket().as_fd());
        Some(connection)
    }

    /// Takes every connection off the engine, as it stands, for the next
    /// instance; the tasks waiting for them learn that they were handed
    /// over.
    fn hand_over(&mut self) -> Vec<Taken> {
        let keys = self.keys();
        self.deadlines.clear();
        keys.into_iter()
            .filter_map(|id| self.remove(id))
            .map(|connection| {
                connection.done.complete(Ended {
                    totals: connection.relay.totals(),
                    outcome: Outcome::HandedOver,
                });
                Taken {
                    last_moved: connection.idle.map(|idle| idle.last),
                    relay: connection.relay,
                    started: connection.started,
                }
            })
            .collect()
    }
}
