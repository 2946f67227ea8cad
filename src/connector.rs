//! Opening CONNECT for each accepted client: non-blocking connects driven by
//! the reactor, every resolved address tried in order, one deadline for all.
//!
//! Each accepted client comes with a reserved descriptor (see the accept
//! loop), given back just before its socket towards CONNECT is created, so
//! that clients the relay accepted are never starved of descriptors by the
//! ones it accepts next. When the system is short of descriptors or memory
//! all the same (ENFILE, ENOBUFS, ENOMEM, or EMFILE from elsewhere in the
//! process), the client waits, as clients do in the backlog, within the
//! connect timeout, and the warning names the shortage.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use async_io::{Async, Timer};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::Config;
use crate::endpoint::{Target, TargetHost, UnixAddr};

/// How long a client waits before the relay tries again to create its
/// socket when the system is short of descriptors or memory.
const SHORTAGE_PAUSE: Duration = Duration::from_millis(50);

thread_local! {
    /// Shortage warnings, at most one per interval for the whole relay.
    static SHORTAGE_WARNINGS: RefCell<crate::log::Throttle> =
        const { RefCell::new(crate::log::Throttle::new(Duration::from_secs(10))) };
}

/// How one attempt to reach CONNECT is going.
struct Attempt {
    /// The descriptor held for this client since it was accepted.
    reserve: Cell<Option<OwnedFd>>,
    /// The last shortage met creating a socket, to name in a timeout.
    shortage: RefCell<Option<io::Error>>,
    /// The last refusal retried with `--connect-retry`, likewise.
    refused: RefCell<Option<io::Error>>,
}

/// The longest pause between two tries with `--connect-retry`.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(500);

/// Whether `--connect-retry` tries again after this error: CONNECT is not
/// listening yet (refused, or its socket file does not exist yet).
fn not_up_yet(e: &io::Error) -> bool {
    // By kind: the error of one address is wrapped with that address.
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
    )
}

/// Connects to CONNECT for one client, giving up after `--connect-timeout`
/// for all addresses (and, with `--connect-retry`, all tries) together.
/// `reserve` is closed just before the socket is created.
pub async fn connect(config: &Config, reserve: Option<OwnedFd>) -> io::Result<Async<Socket>> {
    let state = Attempt {
        reserve: Cell::new(reserve),
        shortage: RefCell::new(None),
        refused: RefCell::new(None),
    };
    let target = &config.connect;
    let timeout = config.connect_timeout;
    let attempt = async {
        let mut pause = Duration::from_millis(10);
        loop {
            match connect_any(target, &state).await {
                Err(e) if config.connect_retry && not_up_yet(&e) => {
                    *state.refused.borrow_mut() = Some(e);
                    Timer::after(pause).await;
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
                Ok(socket) => {
                    if let Some(idle) = config.keepalive
                        && matches!(target, Target::Tcp { .. })
                    {
                        keep_alive(socket.get_ref(), idle)?;
                    }
                    return Ok(socket);
                }
                other => return other,
            }
        }
    };
    match timeout {
        None => attempt.await,
        Some(limit) => {
            futures_lite::future::or(attempt, async {
                Timer::after(limit).await;
                let within = crate::timespan::format(Some(limit));
                Err(match state.shortage.borrow_mut().take() {
                    Some(e) => io::Error::new(
                        e.kind(),
                        format!("no socket could be created within {within}: {e}"),
                    ),
                    None => match state.refused.borrow_mut().take() {
                        Some(e) => io::Error::new(
                            e.kind(),
                            format!("no connection within {within}, retrying: {e}"),
                        ),
                        None => io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no connection within {within}"),
                        ),
                    },
                })
            })
            .await
        }
    }
}

async fn connect_any(target: &Target, state: &Attempt) -> io::Result<Async<Socket>> {
    match target {
        Target::Tcp { host, port } => {
            let addresses = resolve(host, *port).await?;
            let mut last_error =
                io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
            for address in addresses {
                match connect_to(Domain::for_address(address), &address.into(), state).await {
                    Ok(socket) => {
                        socket.get_ref().set_tcp_nodelay(true)?;
                        return Ok(socket);
                    }
                    Err(e) => last_error = io::Error::new(e.kind(), format!("{address}: {e}")),
                }
            }
            Err(last_error)
        }
        Target::Unix(UnixAddr::Path(path)) => {
            connect_to(Domain::UNIX, &SockAddr::unix(path)?, state).await
        }
        Target::Unix(UnixAddr::Abstract(name)) => {
            connect_to(Domain::UNIX, &crate::endpoint::abstract_addr(name)?, state).await
        }
    }
}

/// Resolves a CONNECT host. IP literals need no lookup; names are resolved
/// at every connect (by the resolver helper) so that a changed address is
/// picked up.
async fn resolve(host: &TargetHost, port: u16) -> io::Result<Vec<SocketAddr>> {
    match host {
        TargetHost::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        TargetHost::Name(name) => crate::resolver::resolve(name, port)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve '{name}': {e}"))),
    }
}

/// `SO_KEEPALIVE` with `idle` before the first probe (`--keepalive`).
pub fn keep_alive(socket: &Socket, idle: Duration) -> io::Result<()> {
    socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))
}

/// Whether an error means the system is short of descriptors or memory,
/// which passes, rather than that CONNECT cannot be reached.
pub fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A non-blocking socket, in the place of the client's reserved descriptor.
/// Short of descriptors or memory, the client waits rather than being
/// dropped: the caller's deadline bounds the wait.
async fn new_socket(domain: Domain, state: &Attempt) -> io::Result<Socket> {
    drop(state.reserve.take());
    loop {
        match Socket::new(domain, Type::STREAM.cloexec().nonblocking(), None) {
            Err(e) if is_shortage(&e) => {
                if let Some(held_back) = SHORTAGE_WARNINGS.with(|t| t.borrow_mut().allow()) {
                    crate::warn!(
                        "cannot create a socket to reach CONNECT: {e}; clients wait, within the connect timeout{}",
                        crate::log::held_back(held_back)
                    );
                }
                crate::pipe::release_pool();
                *state.shortage.borrow_mut() = Some(e);
                Timer::after(SHORTAGE_PAUSE).await;
            }
            other => {
                *state.shortage.borrow_mut() = None;
                return other;
            }
        }
    }
}

async fn connect_to(
    domain: Domain,
    address: &SockAddr,
    state: &Attempt,
) -> io::Result<Async<Socket>> {
    let socket = new_socket(domain, state).await?;
    let mut pause = Duration::from_millis(1);
    loop {
        match socket.connect(address) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                // Created non-blocking: no need to set it again.
                let socket = Async::new_nonblocking(socket)?;
                // poll_writable, not writable(): it uses the direction's one
                // waker slot instead of growing a waker list that would stay
                // allocated for the connection's life.
                futures_lite::future::poll_fn(|cx| socket.poll_writable(cx)).await?;
                return match socket.get_ref().take_error()? {
                    None => Ok(socket),
                    Some(e) => Err(e),
                };
            }
            // A Unix listener with a full backlog: wait and try again, as a
            // blocking connect would (the caller's deadline bounds this).
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && domain == Domain::UNIX => {
                Timer::after(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
    Async::new_nonblocking(socket)
}
