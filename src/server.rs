//! The accept loop: listeners turned into one stream of connections with
//! async-listen (errors such as EMFILE logged and retried after a pause; at
//! `--connections-max`, backpressure stops accepting so clients wait in the
//! kernel backlog), one task per connection, `--exit-idle-time`, and the
//! graceful shutdown on SIGTERM/SIGINT.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use async_listen::ListenExt;
use futures_lite::{Stream, StreamExt, future};
use socket2::Socket;

use crate::cli::Config;
use crate::identity::proxy_header;
use crate::listener::{Listener, SocketFile};
use crate::relay::{self, Outcome};
use crate::shutdown::AsyncSignals;
use crate::timespan;

/// How long the accept loop pauses after an error such as EMFILE before it
/// tries again (the pending client stays in the backlog meanwhile).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counters shared by the accept loop and the connection tasks.
#[derive(Default)]
pub struct Stats {
    active: AtomicUsize,
    total: AtomicU64,
    /// Most connections open at once since the last time none was.
    peak: AtomicUsize,
    /// When the last connection ended (or the relay started).
    idle_since: Mutex<Option<Instant>>,
}

/// Below this many connections at once, freed memory is left to the
/// allocator; above, it is handed back to the system once all have ended.
const TRIM_AFTER_PEAK: usize = 64;

impl Stats {
    /// Counts a new connection.
    fn connection_started(&self) {
        let active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        self.peak.fetch_max(active, Ordering::Relaxed);
    }

    /// Counts a connection that ended; when none is left, notes the time
    /// (for --exit-idle-time) and returns memory after a busy spell.
    fn connection_ended(&self, became_idle: &async_channel::Sender<()>) {
        if self.active.fetch_sub(1, Ordering::Relaxed) != 1 {
            return;
        }
        *self.idle_since.lock().expect("not poisoned") = Some(Instant::now());
        let _ = became_idle.try_send(());
        if self.peak.swap(0, Ordering::Relaxed) >= TRIM_AFTER_PEAK {
            // Thousands of closed connections leave their memory in malloc's
            // free lists; give it back.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// Connections accepted since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Everything one connection task needs.
struct Connection {
    config: Arc<Config>,
    stats: Arc<Stats>,
    /// Dropped when the task ends; the shutdown waits for all of them.
    _alive: async_channel::Sender<()>,
    became_idle: async_channel::Sender<()>,
}

/// A connection accepted on some listener.
struct Accepted {
    socket: Socket,
    tcp: bool,
}

/// Why the accept loop stopped.
enum Stop {
    Signal,
    Idle,
}

/// Serves the listeners until a signal or `--exit-idle-time`; returns once
/// the relay may exit (always a clean stop: exit status 0).
pub async fn serve(
    listeners: Vec<Listener>,
    config: Arc<Config>,
    signals: AsyncSignals,
) -> io::Result<()> {
    let stats = Arc::new(Stats::default());
    *stats.idle_since.lock().expect("not poisoned") = Some(Instant::now());
    let (alive, all_done) = async_channel::bounded::<()>(1);
    let (became_idle, idle_events) = async_channel::bounded::<()>(1);

    let listen = listeners
        .iter()
        .map(|l| l.address.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let endpoints = format!("{listen} -> {}", config.connect);
    let mut files: Vec<SocketFile> = Vec::new();
    let mut streams: Vec<Pin<Box<dyn Stream<Item = io::Result<Accepted>> + Send>>> = Vec::new();
    for listener in listeners {
        let (socket, address, file) = listener.into_parts();
        let tcp = socket
            .local_addr()
            .map(|a| a.as_socket().is_some())
            .unwrap_or(false);
        files.extend(file);
        let socket = Arc::new(Async::new(socket)?);
        crate::log::write(
            crate::log::Level::Info,
            true,
            format_args!("listening on {address}"),
        );
        streams.push(Box::pin(futures_lite::stream::unfold(
            socket,
            move |socket| async move {
                let accepted = socket
                    .read_with(|s| s.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC))
                    .await
                    .map(|(socket, _)| Accepted { socket, tcp });
                Some((accepted, socket))
            },
        )));
    }
    let merged = streams
        .into_iter()
        .reduce(|a, b| Box::pin(futures_lite::stream::race(a, b)))
        .expect("at least one listener");
    crate::notify::ready(&crate::notify::status_text(&endpoints, &stats));
    crate::info!(
        "ready: relaying {endpoints}, at most {} connections at once",
        config.connections_max
    );
    crate::runtime::spawn(crate::notify::keep_watchdog_happy());
    let status_stats = stats.clone();
    crate::runtime::spawn(
        async move { crate::notify::report_status(endpoints, &status_stats).await },
    );
    let mut incoming = merged
        .log_warnings(rate_limited_accept_warning())
        .handle_errors(ACCEPT_ERROR_PAUSE)
        .backpressure(config.connections_max);

    let stop = async {
        match config.exit_idle_time {
            None => {
                signals.next().await;
                Stop::Signal
            }
            Some(span) => {
                future::or(
                    async {
                        signals.next().await;
                        Stop::Signal
                    },
                    async {
                        wait_idle(&stats, &idle_events, span).await;
                        Stop::Idle
                    },
                )
                .await
            }
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
                stats.connection_started();
                let connection = Connection {
                    config: config.clone(),
                    stats: stats.clone(),
                    _alive: alive.clone(),
                    became_idle: became_idle.clone(),
                };
                crate::runtime::spawn(async move {
                    connection.run(accepted).await;
                    drop(token);
                });
            }
            Ok(None) => unreachable!("accept streams never end"),
            Err(reason) => break reason,
        }
    };
    // Stop accepting: close the listeners and remove their socket files, so
    // a restarted relay can bind at once while this one drains.
    drop(incoming);
    drop(files);
    drop(alive);
    match reason {
        Stop::Idle => {
            crate::notify::stopping("no connections: exiting");
            crate::info!(
                "no connection for {}: exiting",
                timespan::format(config.exit_idle_time)
            );
            Ok(())
        }
        Stop::Signal => {
            crate::notify::stopping(&format!("stopping: {} connections open", stats.active()));
            drain(&stats, &all_done, config.shutdown_timeout, &signals).await;
            Ok(())
        }
    }
}

/// Relays one already-accepted connection (`fd:N`, `Accept=yes`) and returns
/// whether connecting to CONNECT worked.
pub async fn serve_one(
    socket: Socket,
    config: Arc<Config>,
    signals: AsyncSignals,
) -> io::Result<bool> {
    let stats = Arc::new(Stats::default());
    let (alive, all_done) = async_channel::bounded::<()>(1);
    let (became_idle, _idle_events) = async_channel::bounded::<()>(1);
    socket.set_nonblocking(true)?;
    let tcp = socket
        .local_addr()
        .map(|a| a.as_socket().is_some())
        .unwrap_or(false);
    crate::log::write(
        crate::log::Level::Info,
        true,
        format_args!(
            "listening on {} (one inherited connection)",
            socket
                .local_addr()
                .map(|a| crate::listener::display_addr(&a))
                .unwrap_or_default()
        ),
    );
    stats.connection_started();
    crate::notify::ready(&format!(
        "relaying one inherited connection to {}",
        config.connect
    ));
    crate::runtime::spawn(crate::notify::keep_watchdog_happy());
    let connection = Connection {
        config: config.clone(),
        stats: stats.clone(),
        _alive: alive,
        became_idle,
    };
    let task = crate::runtime::spawn(async move { connection.run(Accepted { socket, tcp }).await });
    let connected = future::or(async { Some(task.await) }, async {
        signals.next().await;
        None
    })
    .await;
    match connected {
        Some(connected) => Ok(connected),
        None => {
            crate::notify::stopping("stopping");
            drain(&stats, &all_done, config.shutdown_timeout, &signals).await;
            Ok(true)
        }
    }
}

impl Connection {
    /// Connects to CONNECT and relays; returns whether the connect worked.
    async fn run(self, accepted: Accepted) -> bool {
        // For the -v line only; boxed, as every byte of this future is paid
        // for each held connection.
        let debug = crate::log::enabled(crate::log::Level::Debug)
            .then(|| Box::new((Instant::now(), crate::peer::describe(&accepted.socket))));
        // Boxed so that the task keeps only the relay's small state while it
        // lives, not the larger one of connecting.
        let opened = Box::pin(self.open(accepted)).await;
        let connected = opened.is_some();
        if let Some((client, backend)) = opened {
            let (totals, outcome) = relay::relay(client, backend, self.config.idle_timeout).await;
            if let Some(debug) = debug {
                let (started, peer) = *debug;
                let how = match &outcome {
                    Outcome::Done => "closed".to_string(),
                    Outcome::Idle => format!(
                        "idle for {}, closed",
                        timespan::format(self.config.idle_timeout)
                    ),
                    Outcome::Failed(e) => format!("aborted ({e})"),
                };
                crate::debug!(
                    "{peer}: {how} after {:.3}s: {} bytes up, {} bytes down",
                    started.elapsed().as_secs_f64(),
                    totals.up,
                    totals.down
                );
            }
        }
        self.stats.connection_ended(&self.became_idle);
        connected
    }

    /// Admits the client, connects to CONNECT and sends the PROXY header:
    /// the two sockets to relay between, or `None` (the client is closed).
    async fn open(&self, accepted: Accepted) -> Option<(Async<Socket>, Async<Socket>)> {
        let config = &self.config;
        let socket = accepted.socket;
        if accepted.tcp {
            let _ = socket.set_tcp_nodelay(true);
        }
        if config.allow.is_active() && !self.admitted(&socket) {
            return None;
        }
        let header = config.proxy_protocol.map(|version| {
            let address = |a: io::Result<socket2::SockAddr>| a.ok().and_then(|a| a.as_socket());
            proxy_header(
                version,
                address(socket.peer_addr()),
                address(socket.local_addr()),
            )
        });
        let peer = || crate::peer::describe(&socket);
        let backend = match crate::connector::connect(&config.connect, config.connect_timeout).await
        {
            Ok(backend) => backend,
            Err(e) => {
                crate::warn!(
                    "{}: cannot connect to {}: {e}; closing the client",
                    peer(),
                    config.connect
                );
                return None;
            }
        };
        if let Some(header) = header
            && let Err(e) = relay::write_all(&backend, &header).await
        {
            crate::warn!(
                "{}: cannot send the PROXY header to {}: {e}",
                peer(),
                config.connect
            );
            return None;
        }
        // Accepted non-blocking (accept4), or made so by serve_one: no
        // system call to set it again.
        match Async::new_nonblocking(socket) {
            Ok(client) => Some((client, backend)),
            Err(e) => {
                crate::warn!("cannot register a client: {e}");
                None
            }
        }
    }

    /// Checks a Unix client against `--allow-uid`/`--allow-gid`, before
    /// CONNECT is contacted.
    fn admitted(&self, socket: &Socket) -> bool {
        let Some(credentials) = crate::peer::credentials(socket) else {
            crate::warn!("refused a client whose credentials cannot be read");
            return false;
        };
        let allowed = self
            .config
            .allow
            .allows(&credentials, &crate::peer::groups(socket));
        if !allowed {
            crate::warn!(
                "refused client pid {} uid {} gid {}: not allowed by --allow-uid/--allow-gid",
                credentials.pid,
                credentials.uid,
                credentials.gid
            );
        }
        allowed
    }
}

/// Resolves once no connection has been open for `span`.
async fn wait_idle(stats: &Stats, idle_events: &async_channel::Receiver<()>, span: Duration) {
    loop {
        if stats.active() == 0 {
            let since = stats
                .idle_since
                .lock()
                .expect("not poisoned")
                .unwrap_or_else(Instant::now);
            let deadline = since + span;
            if Instant::now() >= deadline {
                return;
            }
            future::or(
                async {
                    Timer::at(deadline).await;
                },
                async {
                    let _ = idle_events.recv().await;
                },
            )
            .await;
        } else {
            let _ = idle_events.recv().await;
        }
    }
}

/// After a stop signal: lets open connections finish within `timeout`; a
/// second signal ends the wait at once.
async fn drain(
    stats: &Stats,
    all_done: &async_channel::Receiver<()>,
    timeout: Option<Duration>,
    signals: &AsyncSignals,
) {
    let open = stats.active();
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
        // Errs once every connection task has dropped its sender.
        let _ = all_done.recv().await;
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
        signals.next().await;
        "second signal"
    };
    let why = future::or(finished, future::or(expired, again)).await;
    let left = stats.active();
    if left == 0 {
        crate::info!("stopped: {why}");
    } else {
        crate::warn!(
            "stopped: {why}; closing {left} open connection{}",
            if left == 1 { "" } else { "s" }
        );
    }
}

/// Logs accept errors that are not transient, at most once per interval,
/// with the count of those not logged.
fn rate_limited_accept_warning() -> impl FnMut(&io::Error) {
    let mut last: Option<Instant> = None;
    let mut suppressed = 0u64;
    move |error| {
        if last.is_some_and(|t| t.elapsed() < ACCEPT_ERROR_LOG_INTERVAL) {
            suppressed += 1;
            return;
        }
        let hint = async_listen::error_hint(error);
        let more = if suppressed > 0 {
            format!(" ({suppressed} more since the last report)")
        } else {
            String::new()
        };
        crate::warn!(
            "accept failed: {error}{}{more}; retrying",
            if hint.is_empty() {
                String::new()
            } else {
                format!(". {hint}")
            }
        );
        last = Some(Instant::now());
        suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each held connection pays for its task's state: keep it small.
    #[test]
    fn connection_task_is_small() {
        let args: Vec<String> = ["127.0.0.1:0", "127.0.0.1:9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let Ok(crate::cli::Command::Run(config)) = crate::cli::parse("relay", &args) else {
            panic!("arguments")
        };
        let (alive, _all_done) = async_channel::bounded::<()>(1);
        let (became_idle, _idle_events) = async_channel::bounded::<()>(1);
        let connection = Connection {
            config: Arc::new(config),
            stats: Arc::new(Stats::default()),
            _alive: alive,
            became_idle,
        };
        let (socket, _peer) =
            Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        let task = connection.run(Accepted { socket, tcp: false });
        assert!(
            std::mem::size_of_val(&task) <= 320,
            "{} bytes",
            std::mem::size_of_val(&task)
        );
    }
}
