//! Serving: the listeners' clients (accepted within `--connections-max` by
//! `crate::accept`), one task per connection, the connections handed over
//! by the previous instance, `--exit-idle-time`, the graceful shutdown on
//! SIGTERM/SIGINT and the hand-over on SIGUSR2. An inherited connected socket is the
//! same server over a stream of one connection.
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
use socket2::Socket;

use crate::accept::{Accepted, Acceptor, Incoming, Limit, Token, accept_stream};

use crate::config::Config;
use crate::connections::{Connections, Entry};
use crate::identity::proxy_header;
use crate::listener::Opened;
use crate::relay::{self, Outcome};
use crate::shutdown::Request;
use crate::timespan;

/// Requests to stop or hand over: signals in the program, anything a test
/// sends. The first stops accepting; a stop request after it ends the drain
/// at once. A repeated hand-over request (two reloads in a row) is never a
/// reason to cut anything: it is ignored, with a line.
pub struct Stops(async_channel::Receiver<Request>);

impl Stops {
    pub fn new(requests: async_channel::Receiver<Request>) -> Stops {
        Stops(requests)
    }

    /// Waits for the next request (forever, once no sender is left).
    async fn next(&self) -> Request {
        match self.0.recv().await {
            Ok(request) => request,
            Err(_) => future::pending().await,
        }
    }

    /// Waits for the next stop request, once the relay is stopping or
    /// handing over already.
    async fn next_stop(&self) {
        loop {
            match self.next().await {
                Request::Stop => return,
                Request::HandOver => crate::info!(
                    "SIGUSR2: a hand-over or drain is under way already; ignored (SIGTERM cuts the open connections)"
                ),
            }
        }
    }
}

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
    pub adopted: Vec<crate::handover::Adopted>,
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

/// Serves what LISTEN opened, and the connections handed over, until a
/// signal, `--exit-idle-time`, or (for one inherited connection) its end.
pub async fn serve(
    opened: Opened,
    store: Store,
    config: Rc<Config>,
    signals: Stops,
    ready_fd: Option<OwnedFd>,
) -> io::Result<Served> {
    let connections = Connections::new();
    let limit = Limit::new(config.connections_max);
    let adopted = store.adopted.len();
    // Closed once systemd has processed every removal sent before: adopted
    // connections keep their linger 0 (a crash is a reset) until then. (A
    // hand-over waits for a barrier of its own before it stores anything.)
    let (forgotten, confirmed) = async_channel::bounded::<()>(1);
    for connection in store.adopted {
        crate::handover::commit(&connection);
        let debug = crate::log::enabled(crate::log::Level::Debug).then(|| {
            (
                connection.started,
                crate::peer::describe(connection.relay.client.socket(), connection.peer),
            )
        });
        relay_here(
            &connections,
            &config,
            connection.relay,
            (connection.started, connection.last_moved),
            debug,
            Origin::Adopted(limit.token(), confirmed.clone()),
        );
    }
    if crate::notify::connected() {
        crate::runtime::spawn(async move {
            if let Err(e) = crate::notify::barrier(crate::handover::STORE_TIMEOUT).await {
                crate::warn!(
                    "systemd did not confirm that it forgot the adopted connections ({e}); closing them normally all the same"
                );
            }
            drop(forgotten);
        });
    } else {
        drop(forgotten);
    }
    if adopted > 0 {
        crate::info!(
            "took over {adopted} connection{} from the previous instance",
            if adopted == 1 { "" } else { "s" }
        );
    }
    let mut files = Vec::new();
    let (incoming, endpoints, ready, single): (Incoming, String, String, bool) = match opened {
        Opened::Listeners(listeners) => {
            let addresses = listeners
                .iter()
                .map(|l| l.address.clone())
                .collect::<Vec<_>>();
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
            (merged, endpoints, status, false)
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
            (
                Box::pin(futures_lite::stream::once(Ok(accepted))),
                endpoints,
                status,
                true,
            )
        }
    };
    crate::notify::ready(&ready);
    if let Some(fd) = ready_fd {
        // s6: a newline on the notification descriptor, which is then
        // closed; never blocking, even on a full pipe.
        let _ = rustix::io::ioctl_fionbio(&fd, true);
        if let Err(e) = rustix::io::write(&fd, b"\n") {
            crate::warn!("cannot write to --ready-fd {}: {e}", fd.as_raw_fd());
        }
    }
    if !single {
        crate::info!(
            "ready: relaying {endpoints}, at most {} connections at once",
            config.connections_max
        );
    }
    crate::runtime::spawn(crate::notify::keep_watchdog_happy(crate::engine::alive));
    let counts = connections.clone();
    crate::runtime::spawn(crate::notify::report_status(endpoints, move || {
        (counts.active(), counts.total())
    }));
    let mut incoming = Acceptor::new(incoming, limit);

    let stop = async {
        let signal = async {
            match signals.next().await {
                Request::Stop => Stop::Signal,
                Request::HandOver => Stop::HandOver,
            }
        };
        let signal = future::or(signal, async {
            Stop::Resolver(crate::resolver::failed().await)
        });
        match config.exit_idle_time {
            Some(span) if !single => {
                future::or(signal, async {
                    connections.idle_for(span).await;
                    Stop::Idle
                })
                .await
            }
            _ => signal.await,
        }
    };
    futures_lite::pin!(stop);
    let reason = loop {
        let next = future::or(async { Ok(incoming.next().await) }, async {
            Err((&mut stop).await)
        })
        .await;
        match next {
            Ok(Some((token, accepted))) => {
                let connection = Connection {
                    entry: connections.open(accepted.socket.as_raw_fd()),
                    config: config.clone(),
                };
                crate::runtime::spawn(async move {
                    connection.run(Box::new(accepted)).await;
                    drop(token);
                });
            }
            Ok(None) => break Stop::Exhausted,
            Err(Stop::HandOver) if single => break Stop::Signal,
            Err(reason) => break reason,
        }
    };
    // Stop accepting: close the listeners and remove their socket files, so
    // a restarted relay can bind at once while this one drains.
    drop(incoming);
    drop(files);
    match reason {
        Stop::Idle => {
            crate::notify::stopping("no connections: exiting");
            crate::info!(
                "no connection for {}: exiting",
                timespan::format(config.exit_idle_time)
            );
        }
        Stop::Exhausted => {
            let ended = future::or(
                async {
                    connections.none_left().await;
                    true
                },
                async {
                    signals.next_stop().await;
                    false
                },
            )
            .await;
            if !ended {
                crate::notify::stopping("stopping");
                drain(&connections, config.shutdown_timeout, &signals).await;
            }
        }
        Stop::Signal => {
            crate::notify::stopping(&format!(
                "stopping: {} connections open",
                connections.active()
            ));
            drain(&connections, config.shutdown_timeout, &signals).await;
        }
        Stop::HandOver => {
            hand_over(&connections, &config, store.occupied, &signals).await;
            return Ok(Served::HandedOver);
        }
        Stop::Resolver(why) => {
            // No new helper (fork is unsound and exec forbidden by now): the
            // supervisor starts a new relay. Open connections need none:
            // with a store they go to the next instance, otherwise they
            // drain here.
            crate::warn!("{why}: host names cannot be resolved; stopping");
            crate::notify::stopping(&format!("stopping: {why}"));
            if store.occupied.is_some() {
                hand_over(&connections, &config, store.occupied, &signals).await;
            } else {
                drain(&connections, config.shutdown_timeout, &signals).await;
            }
            return Err(io::Error::other(format!(
                "{why}: host names cannot be resolved"
            )));
        }
    }
    if single && connections.unreached() > 0 {
        Ok(Served::Unreached)
    } else {
        Ok(Served::Stopped)
    }
}

/// SIGUSR2: every connection goes to systemd's file descriptor store for
/// the next instance, as it stands. Without a store, or when it cannot take
/// them all, the connections left are drained as on SIGTERM, and the line
/// says why.
async fn hand_over(
    connections: &Connections,
    config: &Rc<Config>,
    occupied: Option<usize>,
    signals: &Stops,
) {
    let Some(occupied) = occupied else {
        crate::warn!(
            "hand-over: no file descriptor store (--fd-store under systemd with FileDescriptorStoreMax=): draining {} connections instead",
            connections.active()
        );
        // No STOPPING=1: systemd would hold `systemctl reload` until the
        // drain ends; the unit goes on running until the relay exits 3.
        crate::notify::status("draining for a restart");
        drain(connections, config.shutdown_timeout, signals).await;
        return;
    };
    crate::notify::status("handing connections over to the next instance");
    // Clients still being admitted or connected finish that first (within
    // --connect-timeout): a half-opened connection cannot be stored.
    let patience = async {
        Timer::after(config.connect_timeout.unwrap_or(Duration::from_secs(10))).await;
    };
    future::or(connections.none_opening(), patience).await;
    let taken = match crate::engine::hand_over().await {
        Ok(taken) => taken,
        Err(e) => {
            crate::warn!("hand-over: {e}; draining instead");
            drain(connections, config.shutdown_timeout, signals).await;
            return;
        }
    };
    // Everything sent to systemd before (removals above all) is processed
    // before anything is stored.
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
            let cut = connections.abort_opening();
            if cut > 0 {
                crate::warn!(
                    "hand-over: {cut} client{} still connecting to {} after {}: cut (TCP peers get a reset)",
                    if cut == 1 { "" } else { "s" },
                    config.connect,
                    timespan::format(config.connect_timeout)
                );
            }
        }
        Err((rest, why)) => {
            crate::warn!(
                "hand-over: {} connection{} not stored ({why}): they go on here, and drain",
                rest.len(),
                if rest.len() == 1 { "" } else { "s" }
            );
            // The tasks of the connections taken off the engine end first,
            // so that the drain counts only what is open.
            loop {
                let before = connections.active();
                future::yield_now().await;
                if connections.active() == before {
                    break;
                }
            }
            for taken in rest {
                let last_moved = taken.last_moved.unwrap_or_else(Instant::now);
                let times = (taken.started, last_moved);
                relay_here(
                    connections,
                    config,
                    taken.relay,
                    times,
                    None,
                    Origin::TakenBack,
                );
            }
            // No STOPPING=1: systemd would hold `systemctl reload` until the
            // drain ends; the unit goes on running until the relay exits 3.
            crate::notify::status("draining for a restart");
            drain(connections, config.shutdown_timeout, signals).await;
        }
    }
}

/// Where an already open connection comes from.
enum Origin {
    /// Handed over by the previous instance: it holds a `-c` token, and its
    /// sockets close cleanly only once the store has forgotten them (the
    /// channel closes then).
    Adopted(Token, async_channel::Receiver<()>),
    /// Taken back from a hand-over that could not store it; counted
    /// already.
    TakenBack,
}

/// Relays a connection that is already open (handed over by the previous
/// instance, or taken back from a hand-over that failed) until it ends, as
/// a task of its own. `times`: when it began and when a byte last moved.
fn relay_here(
    connections: &Connections,
    config: &Rc<Config>,
    relay: relay::Relay,
    (started, last_moved): (Instant, Instant),
    debug: Option<(Instant, String)>,
    origin: Origin,
) {
    let client = relay.client.socket().as_raw_fd();
    let (entry, token, forgotten) = match origin {
        Origin::Adopted(token, forgotten) => {
            (connections.open(client), Some(token), Some(forgotten))
        }
        Origin::TakenBack => (connections.reopen(client), None, None),
    };
    let task = Connection {
        entry,
        config: config.clone(),
    };
    task.entry.set_backend(relay.backend.socket().as_raw_fd());
    let extra =
        (debug.is_some() || forgotten.is_some()).then(|| Box::new(Extra { debug, forgotten }));
    let running = task.relay(relay, started, last_moved, extra);
    crate::runtime::spawn(async move {
        running.await;
        drop(token);
    });
}

/// What few connections carry, boxed (every byte of a connection's task is
/// paid for each held connection): the start and peer for its `-v` line,
/// and for an adopted connection, the channel that closes once the store
/// has forgotten its sockets, which only then may close with a clean end of
/// stream.
struct Extra {
    debug: Option<(Instant, String)>,
    forgotten: Option<async_channel::Receiver<()>>,
}

/// One connection's task.
struct Connection {
    config: Rc<Config>,
    entry: Entry,
}

impl Connection {
    /// Connects to CONNECT and relays.
    /// `accepted` is boxed: an async fn keeps its arguments for its whole
    /// life, and every byte of this future is paid for each held connection.
    async fn run(self, accepted: Box<Accepted>) {
        // For the -v line only; boxed, as every byte of this future is paid
        // for each held connection.
        let extra = crate::log::enabled(crate::log::Level::Debug).then(|| {
            Box::new(Extra {
                debug: Some((
                    Instant::now(),
                    crate::peer::describe(&accepted.socket, accepted.peer),
                )),
                forgotten: None,
            })
        });
        // Boxed so that the task keeps only the relay's small state while it
        // lives, not the larger one of connecting.
        let opened = Box::pin(self.open(*accepted)).await;
        let Some((client, backend)) = opened else {
            self.entry.unreached();
            self.entry.forget_sockets();
            return;
        };
        let now = Instant::now();
        self.relay(relay::relay(client, backend), now, now, extra)
            .await;
    }

    /// Hands the connection to the engine at once (so that a hand-over
    /// finds it there), and returns what waits for its end and logs it.
    /// Not an async fn: its future would hold the relay state for the
    /// connection's whole life.
    fn relay(
        self,
        relay: relay::Relay,
        started: Instant,
        last_moved: Instant,
        extra: Option<Box<Extra>>,
    ) -> impl std::future::Future<Output = ()> {
        self.entry.relaying();
        let ended = crate::engine::relay(relay, started, last_moved, self.config.idle_timeout);
        async move {
            let ended = ended.await;
            // The sockets close at the end of this function: out of the
            // registry first.
            self.entry.forget_sockets();
            let (totals, outcome) = match ended {
                Ok(crate::engine::Ended {
                    totals,
                    outcome,
                    sockets,
                }) => {
                    let forgotten = extra.as_ref().and_then(|e| e.forgotten.clone());
                    match (forgotten, sockets) {
                        (Some(forgotten), Some((client, backend)))
                            if matches!(outcome, Outcome::Done | Outcome::Idle) =>
                        {
                            // Closed by a task of their own, so that this
                            // one stays small.
                            crate::runtime::spawn(async move {
                                let _ = forgotten.recv().await;
                                crate::handover::clean_close(&[&client, &backend]);
                            });
                        }
                        (_, sockets) => drop(sockets),
                    }
                    (totals, outcome)
                }
                Err(e) => {
                    crate::warn!("cannot relay a connection: {e}");
                    return;
                }
            };
            if let Some((started, peer)) = extra.and_then(|e| e.debug) {
                let how = match &outcome {
                    Outcome::Done => "closed".to_string(),
                    Outcome::Idle => format!(
                        "idle for {}, closed",
                        timespan::format(self.config.idle_timeout)
                    ),
                    Outcome::Failed(e) => format!("aborted ({e})"),
                    // The next instance logs it when it ends.
                    Outcome::HandedOver => return,
                };
                crate::debug!(
                    "{peer}: {how} after {:.3}s: {} bytes up, {} bytes down",
                    started.elapsed().as_secs_f64(),
                    totals.up,
                    totals.down
                );
            }
        }
    }

    /// Admits the client, connects to CONNECT and sends the PROXY header:
    /// the two sockets to relay between, or `None` (the client is closed).
    async fn open(&self, accepted: Accepted) -> Option<(Socket, Socket)> {
        let config = &self.config;
        let Accepted {
            socket,
            peer,
            tcp,
            reserve,
        } = accepted;
        let who = || crate::peer::describe(&socket, peer);
        if tcp {
            let _ = socket.set_tcp_nodelay(true);
            if let Some(idle) = config.keepalive
                && let Err(e) = crate::connector::keep_alive(&socket, idle)
            {
                crate::warn!("{}: cannot enable keepalive: {e}", who());
            }
        }
        if config.allow.is_active() && !self.admitted(&socket) {
            return None;
        }
        let header = match config.proxy_protocol {
            None => None,
            Some(version) if tcp => {
                let source = peer;
                let destination = socket.local_addr().ok().and_then(|a| a.as_socket());
                let (Some(source), Some(destination)) = (source, destination) else {
                    crate::warn!(
                        "a TCP client whose address cannot be known: closed without contacting {}",
                        config.connect
                    );
                    return None;
                };
                Some(proxy_header(version, Some(source), Some(destination)))
            }
            // A Unix client has no IP address: UNKNOWN (v1) or LOCAL (v2).
            Some(version) => Some(proxy_header(version, None, None)),
        };
        let backend = match crate::connector::connect(config, reserve).await {
            Ok(backend) => backend,
            Err(e) => {
                crate::warn!(
                    "{}: cannot connect to {}: {e}; closing the client",
                    who(),
                    config.connect
                );
                return None;
            }
        };
        self.entry.set_backend(backend.get_ref().as_raw_fd());
        if let Some(header) = header
            && let Err(e) = relay::write_all(&backend, &header).await
        {
            crate::warn!(
                "{}: cannot send the PROXY header to {}: {e}",
                who(),
                config.connect
            );
            return None;
        }
        // The backend leaves the runtime's reactor for the engine's.
        match backend.into_inner() {
            Ok(backend) => Some((socket, backend)),
            Err(e) => {
                crate::warn!("cannot hand a connection over: {e}");
                None
            }
        }
    }

    /// Checks a Unix client against `--allow-uid`/`--allow-gid`, before
    /// CONNECT is contacted, by its uid, its primary group and every
    /// supplementary group the kernel reports. A client that cannot be
    /// judged is refused.
    fn admitted(&self, socket: &Socket) -> bool {
        let allow = &self.config.allow;
        let credentials = match crate::peer::credentials(socket) {
            Ok(credentials) => credentials,
            Err(e) => {
                crate::warn!("refused a client whose credentials cannot be read: {e}");
                return false;
            }
        };
        let who = format!(
            "client pid {} uid {} gid {}",
            credentials.pid, credentials.uid, credentials.gid
        );
        if allow.allows(&credentials, &[]) {
            return true;
        }
        if !allow.gids.is_empty() {
            match crate::peer::groups(socket) {
                Ok(groups) if allow.allows(&credentials, &groups) => return true,
                Ok(_) => {}
                Err(e) => {
                    crate::warn!("refused {who}: its supplementary groups cannot be read: {e}");
                    return false;
                }
            }
        }
        crate::warn!("refused {who}: not allowed by --allow-uid/--allow-gid");
        false
    }
}

/// After a stop signal: lets open connections finish within `timeout`; a
/// second signal ends the wait at once. Connections still open then are
/// cut with a reset.
async fn drain(connections: &Connections, timeout: Option<Duration>, signals: &Stops) {
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
        signals.next_stop().await;
        "second signal"
    };
    let why = future::or(finished, future::or(expired, again)).await;
    let left = connections.active();
    if left == 0 {
        crate::info!("stopped: {why}");
    } else {
        connections.abort_all();
        crate::warn!(
            "stopped: {why}; cutting {left} open connection{} (TCP peers get a reset)",
            if left == 1 { "" } else { "s" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each held connection pays for its task's state: keep it small.
    #[test]
    fn connection_task_is_small() {
        let config = crate::cli::config_for(&["127.0.0.1:0", "127.0.0.1:9"]);
        let (socket, _peer) =
            Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        let connections = Connections::new();
        let connection = Connection {
            entry: connections.open(socket.as_raw_fd()),
            config: Rc::new(config),
        };
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
        let (opened, _) = crate::listener::open(&config.listen, Default::default()).unwrap();
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
