//! The live connections, in one registry: an [`Entry`] per connection, held
//! by its task from accept to close. Creating one counts the connection;
//! dropping it updates the count, records when the relay became idle and
//! wakes whoever waits for "no connection left" (the drain and
//! `--exit-idle-time`). The registry also knows each connection's sockets,
//! so that the relay can cut them all with a reset when it gives up on them.
//!
//! The runtime is single-threaded: `Rc` and `Cell`, no locks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{BorrowedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Below this many connections at once, freed memory is left to the
/// allocator; above, it is handed back to the system once all have ended.
const TRIM_AFTER_PEAK: usize = 64;

/// All connections of this relay process.
#[derive(Clone)]
pub(crate) struct Connections(Rc<Registry>);

struct Registry {
    active: Cell<usize>,
    total: Cell<u64>,
    /// Connections that ended without reaching CONNECT.
    unreached: Cell<u64>,
    /// Most connections open at once since the last time none was.
    peak: Cell<usize>,
    /// When the last connection ended (or the relay started).
    idle_since: Cell<Instant>,
    /// Connections not yet relaying (being admitted, connecting).
    opening: Cell<usize>,
    /// The sockets of each live connection, by slot; `None` marks a free slot.
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    /// Tasks waiting for the relay to become idle, or for no connection to
    /// be opening.
    waiting: RefCell<Vec<Waker>>,
}

/// What the registry knows of one connection.
struct Slot {
    sockets: [Option<RawFd>; 2],
    /// Handed to the engine (no longer counted as opening).
    relaying: bool,
}

impl Slot {
    /// `SO_LINGER` {on, 0} on the connection's sockets: their close is a
    /// reset.
    fn abort(&self) {
        for fd in self.sockets.iter().flatten() {
            // SAFETY: the descriptor belongs to a live connection: its entry
            // forgets it before the socket is closed (see
            // `Entry::forget_sockets`), and the registry is only used on the
            // runtime's one thread.
            let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
            let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
        }
    }
}

/// One live connection; dropped when its task ends.
pub(crate) struct Entry {
    registry: Rc<Registry>,
    slot: usize,
}

impl Connections {
    pub(crate) fn new() -> Connections {
        Connections(Rc::new(Registry {
            active: Cell::new(0),
            total: Cell::new(0),
            unreached: Cell::new(0),
            peak: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            opening: Cell::new(0),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            waiting: RefCell::new(Vec::new()),
        }))
    }

    /// Registers an accepted client.
    pub(crate) fn open(&self, client: RawFd) -> Entry {
        let registry = &self.0;
        registry.total.set(registry.total.get() + 1);
        self.reopen(client)
    }

    /// Registers a connection counted before (taken back from a hand-over
    /// that could not store it): it is not one more in the total.
    pub(crate) fn reopen(&self, client: RawFd) -> Entry {
        let registry = &self.0;
        let active = registry.active.get() + 1;
        registry.active.set(active);
        registry.peak.set(registry.peak.get().max(active));
        registry.opening.set(registry.opening.get() + 1);
        let sockets = Some(Slot {
            sockets: [Some(client), None],
            relaying: false,
        });
        let mut slots = registry.slots.borrow_mut();
        let slot = match registry.free.borrow_mut().pop() {
            Some(slot) => {
                slots[slot] = sockets;
                slot
            }
            None => {
                slots.push(sockets);
                slots.len() - 1
            }
        };
        Entry {
            registry: self.0.clone(),
            slot,
        }
    }

    /// Connections open now.
    pub(crate) fn active(&self) -> usize {
        self.0.active.get()
    }

    /// Connections accepted since start.
    pub(crate) fn total(&self) -> u64 {
        self.0.total.get()
    }

    /// Connections that ended without reaching CONNECT.
    pub(crate) fn unreached(&self) -> u64 {
        self.0.unreached.get()
    }

    /// Resolves once no connection is open.
    pub(crate) fn none_left(&self) -> impl Future<Output = ()> + '_ {
        futures_lite::future::poll_fn(|cx| {
            if self.0.active.get() == 0 {
                return Poll::Ready(());
            }
            self.0.wait(cx.waker());
            Poll::Pending
        })
    }

    /// Resolves once no connection is still opening (being admitted or
    /// connected to CONNECT).
    pub(crate) fn none_opening(&self) -> impl Future<Output = ()> + '_ {
        futures_lite::future::poll_fn(|cx| {
            if self.0.opening.get() == 0 {
                return Poll::Ready(());
            }
            self.0.wait(cx.waker());
            Poll::Pending
        })
    }

    /// Resolves once no connection has been open for `span`.
    pub(crate) async fn idle_for(&self, span: Duration) {
        loop {
            self.none_left().await;
            // Beyond what a clock can count: never.
            let Some(deadline) = self.0.idle_since.get().checked_add(span) else {
                return futures_lite::future::pending().await;
            };
            let total = self.total();
            async_io::Timer::at(deadline).await;
            // Still idle, and no connection came and went meanwhile.
            if self.active() == 0 && self.total() == total {
                return;
            }
        }
    }

    /// Makes every open connection end as an abort when its sockets close:
    /// `SO_LINGER` {on, 0} turns the close of a TCP socket into a reset, so
    /// a peer never mistakes a cut stream for a complete one. (Unix sockets
    /// have no reset; their peer sees ECONNRESET only if it had sent bytes
    /// the relay did not read, and otherwise an end of stream.)
    pub(crate) fn abort_all(&self) {
        for slot in self.0.slots.borrow().iter().flatten() {
            slot.abort();
        }
    }
}

impl Connections {
    /// Makes the connections still opening (not yet relaying) end as an
    /// abort when their sockets close; how many there are.
    pub(crate) fn abort_opening(&self) -> usize {
        let slots = self.0.slots.borrow();
        let opening = slots.iter().flatten().filter(|slot| !slot.relaying);
        opening.map(Slot::abort).count()
    }
}

impl Registry {
    /// Wakes `waker` at the next change that a wait may be for.
    fn wait(&self, waker: &Waker) {
        let mut waiting = self.waiting.borrow_mut();
        if !waiting.iter().any(|w| w.will_wake(waker)) {
            waiting.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        for waker in self.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

impl Entry {
    /// Records the connection's socket towards CONNECT.
    pub(crate) fn set_backend(&self, backend: RawFd) {
        if let Some(slot) = &mut self.registry.slots.borrow_mut()[self.slot] {
            slot.sockets[1] = Some(backend);
        }
    }

    /// The connection goes to the engine: it is no longer opening.
    pub(crate) fn relaying(&self) {
        if let Some(slot) = &mut self.registry.slots.borrow_mut()[self.slot]
            && !std::mem::replace(&mut slot.relaying, true)
        {
            let opening = &self.registry.opening;
            opening.set(opening.get() - 1);
            if opening.get() == 0 {
                self.registry.wake_all();
            }
        }
    }

    /// Forgets the sockets, which are about to be closed.
    pub(crate) fn forget_sockets(&self) {
        if let Some(slot) = &mut self.registry.slots.borrow_mut()[self.slot] {
            slot.sockets = [None, None];
        }
    }

    /// Counts this connection as one that never reached CONNECT.
    pub(crate) fn unreached(&self) {
        let unreached = &self.registry.unreached;
        unreached.set(unreached.get() + 1);
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.relaying();
        let registry = &self.registry;
        registry.slots.borrow_mut()[self.slot] = None;
        registry.free.borrow_mut().push(self.slot);
        let active = registry.active.get() - 1;
        registry.active.set(active);
        if active != 0 {
            return;
        }
        registry.idle_since.set(Instant::now());
        registry.wake_all();
        if registry.peak.replace(0) >= TRIM_AFTER_PEAK {
            // Thousands of closed connections leave their memory in malloc's
            // free lists; give it back.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}
