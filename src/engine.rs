//! The thread that moves the bytes. Every relayed connection's two sockets
//! are registered once with an epoll instance of this thread's own,
//! edge-triggered, and the thread sleeps in one `epoll_wait` until
//! something happens: per message, one wait and the splices themselves. The
//! async runtime's reactor (one-shot registrations re-armed for every wait,
//! a timerfd set for every sleep, a wake-up descriptor to drain) would add
//! five system calls to each round trip (docs/bench.md).
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
use socket2::Socket;

use crate::relay::{self, Outcome, Relay, Totals};

/// A connection for the engine, and where to say how it ended.
struct Job {
    relay: Relay,
    idle_timeout: Option<Duration>,
    done: Done,
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

/// How a connection ended; the sockets come back to be closed by the task
/// (which first takes them out of the registry of live connections).
pub struct Ended {
    pub totals: Totals,
    pub outcome: Outcome,
    pub sockets: (Socket, Socket),
}

/// The engine's inbox: jobs, and a descriptor that wakes it.
struct Inbox {
    jobs: Mutex<mpsc::Sender<Job>>,
    wake: OwnedFd,
}

static INBOX: OnceLock<Inbox> = OnceLock::new();

/// The events every socket is watched for: readable (and the peer's end of
/// sending), edge-triggered.
fn read_events() -> EventFlags {
    EventFlags::IN | EventFlags::RDHUP | EventFlags::ET
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

/// Relays between `client` and `backend` on the engine thread until the
/// connection ends (`idle_timeout`: no byte either way for that long).
pub async fn relay(
    client: Socket,
    backend: Socket,
    idle_timeout: Option<Duration>,
) -> io::Result<Ended> {
    let inbox = INBOX
        .get()
        .ok_or_else(|| io::Error::other("the relay engine is not running"))?;
    let completion = Arc::new(Mutex::new(Completion::default()));
    let job = Job {
        relay: relay::relay(client, backend),
        idle_timeout,
        done: Done(completion.clone()),
    };
    inbox
        .jobs
        .lock()
        .expect("not poisoned")
        .send(job)
        .map_err(|_| io::Error::other("the relay engine is gone"))?;
    rustix::io::write(&inbox.wake, &1u64.to_ne_bytes())?;
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
        .spawn(move || Engine::new(epoll, wake_for_thread, inbox).run())?;
    Ok(Inbox {
        jobs: Mutex::new(jobs),
        wake,
    })
}

/// One connection on the engine.
struct Connection {
    relay: Relay,
    done: Done,
    /// Boxed: most connections have no idle timeout.
    idle: Option<Box<Idle>>,
    /// Tells this connection from an earlier one in the same slot.
    generation: u32,
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
    inbox: mpsc::Receiver<Job>,
    /// By slot; boxed, so that a free slot costs a pointer.
    connections: Vec<Option<Box<Connection>>>,
    free: Vec<u32>,
    generation: u32,
    /// Idle deadlines to check, earliest first (checked lazily: a deadline
    /// whose connection moved bytes meanwhile is pushed again, later).
    deadlines: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl Engine {
    fn new(epoll: OwnedFd, wake: OwnedFd, inbox: mpsc::Receiver<Job>) -> Engine {
        Engine {
            epoll,
            wake,
            inbox,
            connections: Vec::new(),
            free: Vec::new(),
            generation: 0,
            deadlines: BinaryHeap::new(),
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
                self.step(id);
            }
            self.check_deadlines();
        }
    }

    /// Registers the connections the runtime handed over.
    fn take_jobs(&mut self) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut counter);
        while let Ok(job) = self.inbox.try_recv() {
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
            // Writability is watched only while a write is blocked (see
            // `Edge::write_watch_change`): most of the time nothing is.
            let flags = read_events();
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
                self.deadlines.push(Reverse((Instant::now() + span, id)));
                Box::new(Idle {
                    span,
                    last: Instant::now(),
                    moved: 0,
                })
            });
            self.connections[slot as usize] = Some(Box::new(Connection {
                relay: job.relay,
                done: job.done,
                idle,
                generation: id.generation,
            }));
            if let Err(e) = registered {
                if let Some(connection) = self.get(id) {
                    connection.relay.abort();
                }
                self.finish(id, Outcome::Failed(e.into()));
                continue;
            }
            // Bytes may have arrived before the registration: try at once.
            self.step(id);
        }
    }

    /// The live connection with this key.
    fn get(&mut self, id: Key) -> Option<&mut Connection> {
        self.connections
            .get_mut(id.slot as usize)?
            .as_deref_mut()
            .filter(|c| c.generation == id.generation)
    }

    /// Moves what can move on one connection.
    fn step(&mut self, id: Key) {
        let epoll = &self.epoll;
        let Some(connection) = self
            .connections
            .get_mut(id.slot as usize)
            .and_then(|c| c.as_deref_mut().filter(|c| c.generation == id.generation))
        else {
            return;
        };
        let mut outcome = connection.relay.step();
        for (side, backend) in [
            (&connection.relay.client, false),
            (&connection.relay.backend, true),
        ] {
            if let Some(watch) = side.write_watch_change() {
                let flags = if watch {
                    read_events() | EventFlags::OUT
                } else {
                    read_events()
                };
                if let Err(e) = epoll::modify(epoll, side.socket(), id.event_data(backend), flags) {
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
            let due = idle.last + idle.span;
            if due > now {
                self.deadlines.push(Reverse((due, id)));
            } else {
                self.finish(id, Outcome::Idle);
            }
        }
    }

    /// Deregisters a connection and hands its sockets back.
    fn finish(&mut self, id: Key, outcome: Outcome) {
        if self.get(id).is_none() {
            return;
        }
        let Some(connection) = self.connections[id.slot as usize].take() else {
            return;
        };
        self.free.push(id.slot);
        let connection = *connection;
        let relay = connection.relay;
        let _ = epoll::delete(&self.epoll, relay.client.socket().as_fd());
        let _ = epoll::delete(&self.epoll, relay.backend.socket().as_fd());
        let totals = relay.totals();
        let sockets = relay.into_sockets();
        connection.done.complete(Ended {
            totals,
            outcome,
            sockets,
        });
    }
}
