//! One connection's task, from accept to end: admit the client, connect to
//! CONNECT, send the PROXY header, then hand both sockets to the engine
//! (`crate::engine`), which owns them from then on, and wait for how the
//! connection ended. While it opens, the task owns its sockets and races
//! the registry's cut signal: when a drain or a hand-over gives up on it,
//! it makes them a reset itself.
//!
//! Every byte of a task's future is paid for each held connection: what
//! only a few connections need is boxed.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::Async;
use futures_lite::future;
use socket2::Socket;

use crate::accept::{Accepted, Token};
use crate::config::Config;
use crate::connections::Entry;
use crate::relay::{self, Outcome, Relay};
use crate::timespan;

/// One connection's task.
pub struct Connection {
    config: Rc<Config>,
    entry: Entry,
    /// Its place under `--connections-max` (none for a connection taken
    /// back from a failed hand-over: accepting has stopped by then).
    _token: Option<Token>,
}

/// Where a connection that is open already comes from.
pub enum Opened {
    /// Handed over by the previous instance; it may end cleanly only once
    /// systemd's store has forgotten it.
    Adopted,
    /// Taken back from a hand-over that could not store it.
    TakenBack,
}

/// How opening a connection ended.
enum Opening {
    Done,
    /// The client was refused, or CONNECT could not be reached.
    Failed,
    /// A drain or a hand-over gave up on it.
    Cut,
}

/// For the `-v` line at the end: when the connection began and who the
/// client is. Boxed, and only with `-v`.
type Debug = Option<Box<(Instant, String)>>;

impl Connection {
    pub fn new(config: Rc<Config>, entry: Entry, token: Option<Token>) -> Connection {
        Connection {
            config,
            entry,
            _token: token,
        }
    }

    /// Connects to CONNECT and relays.
    /// `accepted` is boxed: an async fn keeps its arguments for its whole
    /// life.
    pub async fn run(self, accepted: Box<Accepted>) {
        let debug = crate::log::enabled(crate::log::Level::Debug).then(|| {
            Box::new((
                Instant::now(),
                crate::peer::describe(&accepted.socket, accepted.peer),
            ))
        });
        // Boxed so that the task keeps only the relay's small state while it
        // lives, not the larger one of connecting.
        let opened = Box::pin(self.open(*accepted)).await;
        let Some((client, backend)) = opened else {
            return;
        };
        let now = Instant::now();
        self.relay(relay::relay(client, backend), (now, now), false, debug)
            .await;
    }

    /// Relays a connection that is open already (handed over by the
    /// previous instance, or taken back from a hand-over that failed) until
    /// it ends. `times`: when it began and when a byte last moved.
    pub fn run_opened(
        self,
        relay: Relay,
        times: (Instant, Instant),
        opened: Opened,
        debug: Debug,
    ) -> impl Future<Output = ()> {
        self.relay(relay, times, matches!(opened, Opened::Adopted), debug)
    }

    /// Hands the connection to the engine at once (so that a hand-over
    /// finds it there), and returns what waits for its end and logs it.
    /// Not an async fn: its future would hold the relay state for the
    /// connection's whole life.
    fn relay(
        self,
        relay: Relay,
        times: (Instant, Instant),
        adopted: bool,
        debug: Debug,
    ) -> impl Future<Output = ()> {
        self.entry.relaying();
        let ended = crate::engine::relay(relay, times, self.config.idle_timeout, adopted);
        async move {
            // The whole connection lives as long as this future: its entry
            // counts it, its token holds its place under the limit.
            let this = self;
            let ended = match ended.await {
                Ok(ended) => ended,
                Err(e) => {
                    crate::warn!("cannot relay a connection: {e}");
                    return;
                }
            };
            let Some((started, peer)) = debug.map(|d| *d) else {
                return;
            };
            let how = match &ended.outcome {
                Outcome::Done => "closed".to_string(),
                Outcome::Idle => format!(
                    "idle for {}, closed",
                    timespan::format(this.config.idle_timeout)
                ),
                Outcome::Failed(e) => format!("aborted ({e})"),
                Outcome::Cut => "cut".to_string(),
                // The next instance logs it when it ends.
                Outcome::HandedOver => return,
            };
            crate::debug!(
                "{peer}: {how} after {:.3}s: {} bytes up, {} bytes down",
                started.elapsed().as_secs_f64(),
                ended.totals.up,
                ended.totals.down
            );
        }
    }

    /// Admits the client, connects to CONNECT and sends the PROXY header:
    /// the two sockets to relay between, or `None` (the client is closed,
    /// with a reset if the connection was cut meanwhile).
    async fn open(&self, accepted: Accepted) -> Option<(Socket, Socket)> {
        let Accepted {
            socket,
            peer,
            tcp,
            reserve,
        } = accepted;
        let mut backend = None;
        let opening = async {
            if self
                .connect(&socket, peer, tcp, reserve, &mut backend)
                .await
            {
                Opening::Done
            } else {
                self.entry.unreached();
                Opening::Failed
            }
        };
        let cut = async {
            self.entry.cut().await;
            Opening::Cut
        };
        match future::or(opening, cut).await {
            Opening::Done => {}
            Opening::Failed => return None,
            Opening::Cut => {
                let backend = backend.as_ref().map(Async::get_ref);
                for socket in [Some(&socket), backend].into_iter().flatten() {
                    let _ = socket.set_linger(Some(Duration::ZERO));
                }
                return None;
            }
        }
        // The backend leaves the runtime's reactor for the engine's.
        match backend?.into_inner() {
            Ok(backend) => Some((socket, backend)),
            Err(e) => {
                crate::warn!("cannot hand a connection over: {e}");
                self.entry.unreached();
                None
            }
        }
    }

    /// Admits the client, connects to CONNECT (into `backend`) and sends
    /// the PROXY header; whether all went well.
    async fn connect(
        &self,
        socket: &Socket,
        peer: Option<SocketAddr>,
        tcp: bool,
        reserve: Option<OwnedFd>,
        backend: &mut Option<Async<Socket>>,
    ) -> bool {
        let config = &self.config;
        let who = || crate::peer::describe(socket, peer);
        if tcp {
            let _ = socket.set_tcp_nodelay(true);
            if let Some(idle) = config.keepalive
                && let Err(e) = crate::connector::keep_alive(socket, idle)
            {
                crate::warn!("{}: cannot enable keepalive: {e}", who());
            }
        }
        if config.allow.is_active() && !crate::peer::admitted(&config.allow, socket) {
            return false;
        }
        let header = match config.proxy_protocol {
            None => None,
            Some(version) if tcp => {
                let destination = socket.local_addr().ok().and_then(|a| a.as_socket());
                let (Some(source), Some(destination)) = (peer, destination) else {
                    crate::warn!(
                        "a TCP client whose address cannot be known: closed without contacting {}",
                        config.connect
                    );
                    return false;
                };
                Some(crate::proxy::header(
                    version,
                    Some(source),
                    Some(destination),
                ))
            }
            // A Unix client has no IP address: UNKNOWN (v1) or LOCAL (v2).
            Some(version) => Some(crate::proxy::header(version, None, None)),
        };
        let connected = match crate::connector::connect(config, reserve).await {
            Ok(connected) => backend.insert(connected),
            Err(e) => {
                crate::warn!(
                    "{}: cannot connect to {}: {e}; closing the client",
                    who(),
                    config.connect
                );
                return false;
            }
        };
        if let Some(header) = header
            && let Err(e) = relay::write_all(connected, &header).await
        {
            crate::warn!(
                "{}: cannot send the PROXY header to {}: {e}",
                who(),
                config.connect
            );
            return false;
        }
        true
    }
}
