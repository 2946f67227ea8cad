//! Serving: the listeners' clients (accepted within `--connections-max` by
//! `crate::accept`), one task per connection (`crate::connection`), the
//! connections handed over by the previous instance, `--exit-idle-time`,
//! the graceful shutdown on SIGTERM/SIGINT and the hand-over on SIGUSR2. An
//! inherited connected socket is the same server over a stream of one
//! connection.
//!
//! Who a client is comes from what `accept` returned: a TCP client whose
//! address cannot be known is closed, never announced to CONNECT as
//! `UNKNOWN`. Each accepted client holds a reserved descriptor until its
//! socket towards CONNECT exists, so the loop never accepts clients that
//! could not be served.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::future;

use crate::accept::{Accepted, Acceptor, Incoming, Limit, Token, accept_stream};
use crate::config::Config;
use crate::connection::{Connection, Opened as ConnectionOpened};
use crate::connections::Connections;
use crate::handover::Adopted;
use crate::listener::{Opened, SocketFile};
use crate::relay::Relay;
use crate::shutdown::{Request, Stops};
use crate::timespan;

/// How long a drain or a hand-over waits for the engine thread to cut or
/// hand over its connections: it answers within microseconds unless it is
/// stuck, and a stop must not hang on it (a second signal ends the relay
/// within a second).
const ENGINE_PATIENCE: Duration = Duration::from_millis(500);

/// Why the accept loop stopped.
enum Stop {
    Signal,
    HandOver,
    Idle,
    /// The one inherited connection was taken.
    Exhausted,
    /// The resolver helper died (why): drain, then exit non-zero.
    Resolver(String),
}

/// What systemd's file descriptor store gave this instance, and whether it
/// holds the listeners.
#[derive(Default)]
pub struct Store {
    /// Connections a previous instance handed over.
    pub adopted: Vec<Adopted>,
    /// Descriptors in the store besides this instance's connections
    /// (listeners, stale entries); `None`: no store.
    pub occupied: Option<usize>,
}

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// A clean stop.
    Stopped,
    /// The one inherited connection could not reach CONNECT.
    Unreached,
    /// Handed over (or, failing that, drained) for the next instance.
    HandedOver,
    /// `--check`: the configuration is valid; nothing ran.
    Checked,
}

/// What the server accepts from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// Listeners: clients until a stop.
    Listeners,
    /// One inherited connection: serving ends with it, and a hand-over
    /// request is a stop (there is nothing to accept for a next instance).
    OneConnection,
}

/// The server's state while it serves.
struct Server {
    config: Rc<Config>,
    connections: Connections,
    limit: Limit,
    stops: Stops,
    /// Descriptors in the store besides this instance's connections;
    /// `None`: no store to hand connections over to.
    store: Option<usize>,
    serving: Serving,
}

/// Serves what LISTEN opened, and the connections handed over, until a
/// signal, `--exit-idle-time`, or (for one inherited connection) its end.
pub async fn serve(
    opened: Opened,
    store: Store,
    config: Rc<Config>,
    stops: Stops,
    ready_fd: Option<OwnedFd>,
) -> io::Result<Served> {
    let serving = match opened {
        Opened::Listeners(_) => Serving::Listeners,
        Opened::Connection(_) => Serving::OneConnection,
    };
    let server = Server {
        limit: Limit::new(config.connections_max),
        connections: Connections::new(),
        config,
        stops,
        store: store.occupied,
        serving,
    };
    server.adopt(store.adopted);
    let (incoming, files, endpoints, ready) = server.listen(opened)?;
    server.announce(&endpoints, &ready, ready_fd);
    let stop = server.accept(incoming).await;
    // Stop accepting: close the listeners (above) and remove their socket
    // files, so a restarted relay can bind at once while this one drains.
    drop(files);
    server.stop(stop).await
}

impl Server {
    /// Takes over the connections the previous instance handed over.
    /// Their sockets keep linger 0 (a crash is a reset, as the store's copy
    /// would be) until systemd has processed every removal sent before. (A
    /// hand-over waits for a barrier of its own before it stores anything.)
    fn adopt(&self, adopted: Vec<Adopted>) {
        let count = adopted.len();
        for connection in adopted {
            crate::handover::commit(&connection);
            let debug = crate::log::enabled(crate::log::Level::Debug).then(|| {
                let peer = crate::peer::describe(connection.relay.client.socket(), connection.peer);
                Box::new((connection.started, peer))
            });
            self.relay_opened(
                connection.relay,
                (connection.started, connection.last_moved),
                ConnectionOpened::Adopted,
                debug,
                Some(self.limit.token()),
            );
        }
        if crate::notify::connected() {
            crate::runtime::spawn(async move {
                if let Err(e) = crate::notify::barrier(crate::handover::STORE_TIMEOUT).await {
                    crate::warn!(
                        "systemd did not confirm that it forgot the adopted connections ({e}); closing them normally all the same"
                    );
                }
                let _ = crate::engine::store_forgot();
            });
        } else {
            let _ = crate::engine::store_forgot();
        }
        if count > 0 {
            crate::info!(
                "took over {count} connection{} from the previous instance",
                if count == 1 { "" } else { "s" }
            );
        }
    }

    /// The clients to serve, the socket files to remove once accepting
    /// stops, the endpoints for the status line, and the status that goes
    /// with READY=1.
    fn listen(&self, opened: Opened) -> io::Result<(Incoming, Vec<SocketFile>, String, String)> {
        let config = &self.config;
        match opened {
            Opened::Listeners(listeners) => {
                let addresses = listeners
                    .iter()
                    .map(|l| l.address.clone())
                    .collect::<Vec<_>>();
                let mut files = Vec::new();
                let (first, rest) = listeners.into_parts();
                let (mut merged, file) = accept_stream(first)?;
                files.extend(file);
                for listener in rest {
                    let (stream, file) = accept_stream(listener)?;
                    files.extend(file);
                    merged = Box::pin(futures_lite::stream::race(merged, stream));
                }
                let endpoints = format!("{} -> {}", addresses.join(", "), config.connect);
                let status = crate::notify::status_text(&endpoints, 0, 0);
                Ok((merged, files, endpoints, status))
            }
            Opened::Connection(socket) => {
                socket.set_nonblocking(true)?;
                let local = socket.local_addr();
                let tcp = local.as_ref().is_ok_and(|a| a.as_socket().is_some());
                crate::log::write(
                    crate::log::Level::Info,
                    true,
                    format_args!(
                        "listening on {} (one inherited connection)",
                        local
                            .map(|a| crate::endpoint::display_addr(&a))
                            .unwrap_or_default()
                    ),
                );
                let accepted = Accepted {
                    peer: socket.peer_addr().ok().and_then(|a| a.as_socket()),
                    socket,
                    tcp,
                    reserve: None,
                };
                let endpoints = format!("one inherited connection -> {}", config.connect);
                let status = format!("relaying one inherited connection to {}", config.connect);
                let incoming: Incoming = Box::pin(futures_lite::stream::once(Ok(accepted)));
                Ok((incoming, Vec::new(), endpoints, status))
            }
        }
    }

    /// Tells systemd and an s6 supervisor that the relay is ready, and
    /// starts the watchdog and the status line.
    fn announce(&self, endpoints: &str, ready: &str, ready_fd: Option<OwnedFd>) {
        crate::notify::ready(ready);
        if let Some(fd) = ready_fd {
            // s6: a newline on the notification descriptor, which is then
            // closed; never blocking, even on a full pipe.
            let _ = rustix::io::ioctl_fionbio(&fd, true);
            if let Err(e) = rustix::io::write(&fd, b"\n") {
                crate::warn!("cannot write to --ready-fd {}: {e}", fd.as_raw_fd());
            }
        }
        if self.serving == Serving::Listeners {
            crate::info!(
                "ready: relaying {endpoints}, at most {} connections at once",
                self.config.connections_max
            );
        }
        crate::runtime::spawn(crate::notify::keep_watchdog_happy(crate::engine::alive));
        let counts = self.connections.clone();
        crate::runtime::spawn(crate::notify::report_status(
            endpoints.to_string(),
            move || (counts.active(), counts.total()),
        ));
    }

    /// Accepts clients, a task each, until something stops the relay.
    async fn accept(&self, incoming: Incoming) -> Stop {
        let mut incoming = Acceptor::new(incoming, self.limit.clone());
        let stop = self.next_stop();
        futures_lite::pin!(stop);
        loop {
            let next = future::or(async { Ok(incoming.next().await) }, async {
                Err((&mut stop).await)
            })
            .await;
            match next {
                Ok(Some((token, accepted))) => {
                    let connection =
                        Connection::new(self.config.clone(), self.connections.open(), Some(token));
                    crate::runtime::spawn(connection.run(Box::new(accepted)));
                }
                Ok(None) => return Stop::Exhausted,
                Err(Stop::HandOver) if self.serving == Serving::OneConnection => {
                    return Stop::Signal;
                }
                Err(reason) => return reason,
            }
        }
    }

    /// What stops accepting: a signal, the resolver's death, or
    /// `--exit-idle-time`.
    async fn next_stop(&self) -> Stop {
        let signal = async {
            match self.stops.next().await {
                Request::Stop => Stop::Signal,
                Request::HandOver => Stop::HandOver,
            }
        };
        let signal = future::or(signal, async {
            Stop::Resolver(crate::resolver::failed().await)
        });
        match self.config.exit_idle_time {
            Some(span) if self.serving == Serving::Listeners => {
                future::or(signal, async {
                    self.connections.idle_for(span).await;
                    Stop::Idle
                })
                .await
            }
            _ => signal.await,
        }
    }

    /// Ends serving as `reason` asks, once accepting has stopped.
    async fn stop(&self, reason: Stop) -> io::Result<Served> {
        let connections = &self.connections;
        match reason {
            Stop::Idle => {
                crate::notify::stopping("no connections: exiting");
                crate::info!(
                    "no connection for {}: exiting",
                    timespan::format(self.config.exit_idle_time)
                );
            }
            Stop::Exhausted => {
                let ended = future::or(
                    async {
                        connections.none_left().await;
                        true
                    },
                    async {
                        self.stops.next_stop().await;
                        false
                    },
                )
                .await;
                if !ended {
                    crate::notify::stopping("stopping");
                    self.drain().await;
                }
            }
            Stop::Signal => {
                crate::notify::stopping(&format!(
                    "stopping: {} connections open",
                    connections.active()
                ));
                self.drain().await;
            }
            Stop::HandOver => {
                self.hand_over().await;
                return Ok(Served::HandedOver);
            }
            Stop::Resolver(why) => {
                // No new helper (exec is forbidden by now): the supervisor
                // starts a new relay. Open connections need none: with a
                // store they go to the next instance, otherwise they drain
                // here.
                crate::warn!("{why}: host names cannot be resolved; stopping");
                crate::notify::stopping(&format!("stopping: {why}"));
                if self.store.is_some() {
                    self.hand_over().await;
                } else {
                    self.drain().await;
                }
                return Err(io::Error::other(format!(
                    "{why}: host names cannot be resolved"
                )));
            }
        }
        if self.serving == Serving::OneConnection && connections.unreached() > 0 {
            Ok(Served::Unreached)
        } else {
            Ok(Served::Stopped)
        }
    }

    /// SIGUSR2: every connection goes to systemd's file descriptor store
    /// for the next instance, as it stands. Without a store, or when it
    /// cannot take them all, the connections left are drained as on
    /// SIGTERM, and the line says why.
    async fn hand_over(&self) {
        let connections = &self.connections;
        let config = &self.config;
        let Some(occupied) = self.store else {
            crate::warn!(
                "hand-over: no file descriptor store (--fd-store under systemd with FileDescriptorStoreMax=): draining {} connections instead",
                connections.active()
            );
            // No STOPPING=1: systemd would hold `systemctl reload` until the
            // drain ends; the unit goes on running until the relay exits 3.
            crate::notify::status("draining for a restart");
            self.drain().await;
            return;
        };
        crate::notify::status("handing connections over to the next instance");
        // Clients still being admitted or connected finish that first
        // (within --connect-timeout): a half-opened connection cannot be
        // stored.
        let patience = async {
            Timer::after(config.connect_timeout.unwrap_or(Duration::from_secs(10))).await;
        };
        future::or(connections.none_opening(), patience).await;
        let unanswered = async {
            Timer::after(ENGINE_PATIENCE).await;
            Err(io::Error::other("the relay engine did not answer"))
        };
        let taken = match future::or(crate::engine::hand_over(), unanswered).await {
            Ok(taken) => taken,
            Err(e) => {
                crate::warn!("hand-over: {e}; draining instead");
                self.drain().await;
                return;
            }
        };
        // Everything sent to systemd before (removals above all) is
        // processed before anything is stored.
        let stored = match crate::notify::barrier(crate::handover::STORE_TIMEOUT).await {
            Ok(()) => crate::handover::store(taken, Some(occupied)).await,
            Err(e) => Err((taken, format!("systemd does not answer ({e})"))),
        };
        match stored {
            Ok(stored) => {
                crate::info!(
                    "handed {stored} connection{} to systemd's file descriptor store: exiting for the next instance",
                    if stored == 1 { "" } else { "s" }
                );
                // Clients that did not reach CONNECT in time end with this
                // process: as a cut, never as a clean end of stream.
                let cut = self.cut_everything().await;
                if cut > 0 {
                    crate::warn!(
                        "hand-over: {cut} client{} still connecting to {} after {}: cut (TCP peers get a reset)",
                        if cut == 1 { "" } else { "s" },
                        config.connect,
                        timespan::format(config.connect_timeout)
                    );
                }
            }
            Err((rest, why)) => self.take_back(rest, &why).await,
        }
    }

    /// The connections a hand-over could not store go on here, and drain.
    async fn take_back(&self, rest: Vec<crate::engine::Taken>, why: &str) {
        let connections = &self.connections;
        crate::warn!(
            "hand-over: {} connection{} not stored ({why}): they go on here, and drain",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        );
        // The tasks of the connections taken off the engine end first, so
        // that the drain counts only what is open.
        loop {
            let before = connections.active();
            future::yield_now().await;
            if connections.active() == before {
                break;
            }
        }
        for taken in rest {
            let last_moved = taken.last_moved.unwrap_or_else(Instant::now);
            self.relay_opened(
                taken.relay,
                (taken.started, last_moved),
                ConnectionOpened::TakenBack,
                None,
                None,
            );
        }
        // No STOPPING=1: systemd would hold `systemctl reload` until the
        // drain ends; the unit goes on running until the relay exits 3.
        crate::notify::status("draining for a restart");
        self.drain().await;
    }

    /// Relays a connection that is open already, as a task of its own.
    fn relay_opened(
        &self,
        relay: Relay,
        times: (Instant, Instant),
        opened: ConnectionOpened,
        debug: Option<Box<(Instant, String)>>,
        token: Option<Token>,
    ) {
        let entry = match opened {
            ConnectionOpened::Adopted => self.connections.open(),
            // Counted already.
            ConnectionOpened::TakenBack => self.connections.reopen(),
        };
        let connection = Connection::new(self.config.clone(), entry, token);
        crate::runtime::spawn(connection.run_opened(relay, times, opened, debug));
    }

    /// After a stop signal: lets open connections finish within
    /// `--shutdown-timeout`; a second signal ends the wait at once.
    /// Connections still open then are cut with a reset.
    async fn drain(&self) {
        let connections = &self.connections;
        let timeout = self.config.shutdown_timeout;
        let open = connections.active();
        if open == 0 {
            crate::info!("stopping: no open connections");
            return;
        }
        crate::info!(
            "stopping: waiting up to {} for {open} open connection{}",
            timespan::format(timeout),
            if open == 1 { "" } else { "s" }
        );
        let finished = async {
            connections.none_left().await;
            "all connections finished"
        };
        let expired = async {
            match timeout {
                Some(span) => {
                    Timer::after(span).await;
                    "shutdown timeout reached"
                }
                None => future::pending().await,
            }
        };
        let again = async {
            self.stops.next_stop().await;
            "second signal"
        };
        let why = future::or(finished, future::or(expired, again)).await;
        let left = connections.active();
        if left == 0 {
            crate::info!("stopped: {why}");
        } else {
            self.cut_everything().await;
            crate::warn!(
                "stopped: {why}; cutting {left} open connection{} (TCP peers get a reset)",
                if left == 1 { "" } else { "s" }
            );
        }
    }

    /// Cuts every connection: those still opening (each task makes its own
    /// sockets a reset), then those on the engine, which owns them (a
    /// connection that finished opening meanwhile is there by then); how
    /// many were still opening, or reached the engine after a hand-over
    /// took the others.
    async fn cut_everything(&self) -> usize {
        let opening = self.connections.cut_opening().await;
        let unanswered = async {
            Timer::after(ENGINE_PATIENCE).await;
            Err(io::Error::other("it did not answer"))
        };
        match future::or(crate::engine::cut_all(), unanswered).await {
            Ok(late) => opening + late,
            Err(e) => {
                // A stuck or dead engine: its sockets are its own, and a
                // stop must not wait for it.
                crate::error!("the relay engine cannot cut its connections ({e}): exiting");
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::Socket;

    /// Each held connection pays for its task's state: keep it small.
    #[test]
    fn connection_task_is_small() {
        let config = crate::cli::config_for(&["127.0.0.1:0", "127.0.0.1:9"]);
        let (socket, _peer) =
            Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        let connections = Connections::new();
        let limit = Limit::new(1);
        let connection = Connection::new(Rc::new(config), connections.open(), Some(limit.token()));
        let task = connection.run(Box::new(Accepted {
            socket,
            peer: None,
            tcp: false,
            reserve: None,
        }));
        assert!(
            std::mem::size_of_val(&task) <= 272,
            "{} bytes",
            std::mem::size_of_val(&task)
        );
    }

    /// The server stops when asked, whoever asks: here a test, not a signal.
    #[test]
    fn a_stop_request_ends_serving() {
        let config = crate::cli::config_for(&["127.0.0.1:0", "127.0.0.1:9"]);
        let (opened, _) =
            crate::listener::open(&config.listen, Default::default(), &mut Vec::new()).unwrap();
        let (stop, stops) = async_channel::unbounded();
        stop.try_send(Request::Stop).unwrap();
        let served = crate::runtime::block_on(serve(
            opened,
            Store::default(),
            Rc::new(config),
            Stops::new(stops),
            None,
        ));
        assert_eq!(served.unwrap(), Served::Stopped, "a clean stop");
    }
}
