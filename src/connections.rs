//! The live connections, counted: an [`Entry`] per connection, held by its
//! task from accept to close. Creating one counts the connection; dropping
//! it updates the count, records when the relay became idle and wakes
//! whoever waits for "no connection left" (the drain and
//! `--exit-idle-time`). The registry keeps counts and wake-ups only: a
//! connection's sockets belong to its task while it opens and to the engine
//! once it relays (`crate::engine`), and each cuts its own.
//!
//! The runtime is single-threaded: `Rc` and `Cell`, no locks.

use std::cell::{Cell, RefCell};
use std::future::Future;
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
    /// Tasks waiting for the relay to become idle, or for no connection to
    /// be opening.
    waiting: RefCell<Vec<Waker>>,
    /// Closed to cut the connections still opening; each races it
    /// ([`Entry::cut`]).
    cut: RefCell<Option<async_channel::Sender<()>>>,
    cutting: async_channel::Receiver<()>,
}

/// One live connection; dropped when its task ends.
pub(crate) struct Entry {
    registry: Rc<Registry>,
    /// Not yet handed to the engine.
    opening: Cell<bool>,
}

impl Connections {
    pub(crate) fn new() -> Connections {
        let (cut, cutting) = async_channel::bounded(1);
        Connections(Rc::new(Registry {
            active: Cell::new(0),
            total: Cell::new(0),
            unreached: Cell::new(0),
            peak: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            opening: Cell::new(0),
            waiting: RefCell::new(Vec::new()),
            cut: RefCell::new(Some(cut)),
            cutting,
        }))
    }

    /// Registers an accepted client.
    pub(crate) fn open(&self) -> Entry {
        let registry = &self.0;
        registry.total.set(registry.total.get() + 1);
        self.reopen()
    }

    /// Registers a connection counted before (taken back from a hand-over
    /// that could not store it): it is not one more in the total.
    pub(crate) fn reopen(&self) -> Entry {
        let registry = &self.0;
        let active = registry.active.get() + 1;
        registry.active.set(active);
        registry.peak.set(registry.peak.get().max(active));
        registry.opening.set(registry.opening.get() + 1);
        Entry {
            registry: self.0.clone(),
            opening: Cell::new(true),
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

    /// Cuts the connections still opening (each task makes its own sockets
    /// a reset and closes them) and waits until they are gone; how many
    /// there were. Connections accepted later are cut at once.
    pub(crate) async fn cut_opening(&self) -> usize {
        let opening = self.0.opening.get();
        self.0.cut.borrow_mut().take();
        self.none_opening().await;
        opening
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
    /// The connection goes to the engine: it is no longer opening.
    pub(crate) fn relaying(&self) {
        if self.opening.replace(false) {
            let opening = &self.registry.opening;
            opening.set(opening.get() - 1);
            if opening.get() == 0 {
                self.registry.wake_all();
            }
        }
    }

    /// Resolves once the connections still opening are to be cut
    /// ([`Connections::cut_opening`]).
    pub(crate) fn cut(&self) -> impl Future<Output = ()> + use<> {
        let cutting = self.registry.cutting.clone();
        async move {
            let _ = cutting.recv().await;
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
