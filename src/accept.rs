//! Accepting clients: each listener as a stream of accepted clients, each
//! with a descriptor reserved for its socket towards CONNECT (so that the
//! relay never accepts a client it could not serve), `--connections-max`
//! as tokens held by the connections (at the limit nothing is accepted and
//! clients wait in the kernel's backlog), and accept errors such as EMFILE
//! logged at most once per interval and retried after a pause. This is what
//! async-listen gave the relay before, on the runtime's own parts.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::{Stream, StreamExt};
use socket2::Socket;

use crate::listener::Listener;

/// How long the accept loop pauses after an error such as EMFILE before it
/// tries again (the pending client stays in the backlog meanwhile).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A connection accepted on some listener (or inherited).
pub struct Accepted {
    pub socket: Socket,
    /// The client's IP address as `accept` returned it (Unix clients are
    /// known by their credentials instead).
    pub peer: Option<SocketAddr>,
    pub tcp: bool,
    /// A descriptor held for the client's socket towards CONNECT.
    pub reserve: Option<OwnedFd>,
}

pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Accepted>>>>;

/// `--connections-max`: how many connections may hold a [`Token`] at once
/// before [`Limit::room`] waits.
#[derive(Clone)]
pub struct Limit(Rc<Tokens>);

struct Tokens {
    max: usize,
    held: Cell<usize>,
    /// The accept loop, waiting for room.
    waiting: RefCell<Option<Waker>>,
}

/// One connection's place under the limit; given back when dropped.
pub struct Token(Rc<Tokens>);

impl Limit {
    pub fn new(max: usize) -> Limit {
        Limit(Rc::new(Tokens {
            max,
            held: Cell::new(0),
            waiting: RefCell::new(None),
        }))
    }

    /// A token for a connection, whatever the count (the accept loop waits
    /// for [`Limit::room`] first; a connection handed over by the previous
    /// instance is taken in any case).
    pub fn token(&self) -> Token {
        self.0.held.set(self.0.held.get() + 1);
        Token(self.0.clone())
    }

    /// Resolves once fewer than `max` tokens are held.
    pub async fn room(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.0.held.get() < self.0.max {
                return Poll::Ready(());
            }
            *self.0.waiting.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let tokens = &self.0;
        tokens.held.set(tokens.held.get() - 1);
        if let Some(waker) = tokens.waiting.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Every listener's clients, one at a time, within the limit.
pub struct Acceptor {
    incoming: Incoming,
    limit: Limit,
    warn: Box<dyn FnMut(&io::Error)>,
}

impl Acceptor {
    pub fn new(incoming: Incoming, limit: Limit) -> Acceptor {
        Acceptor {
            incoming,
            limit,
            warn: Box::new(rate_limited_accept_warning()),
        }
    }

    /// The next client, with its token, once the limit has room for it;
    /// `None` when no more can come (the one inherited connection was
    /// taken). Errors are logged (not every one) and retried: a refused or
    /// reset client at once, anything else (EMFILE, ENOBUFS, …) after a
    /// pause, during which the pending clients wait in the backlog.
    pub async fn next(&mut self) -> Option<(Token, Accepted)> {
        loop {
            self.limit.room().await;
            match self.incoming.next().await? {
                Ok(accepted) => return Some((self.limit.token(), accepted)),
                Err(e) if transient(&e) => {}
                Err(e) => {
                    (self.warn)(&e);
                    Timer::after(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

/// Errors of one client (it gave up or was refused before the accept), not
/// of the listener.
fn transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What an operator can do about an accept error, if anything.
fn hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EMFILE) => "Raise the per-process open file limit (LimitNOFILE=, ulimit -n)",
        Some(libc::ENFILE) => "Raise the system's open file limit (fs.file-max)",
        _ => "",
    }
}

/// A listener as a stream of accepted clients, and the socket file to
/// remove when the stream is dropped.
pub fn accept_stream(
    listener: Listener,
) -> io::Result<(Incoming, Option<crate::listener::SocketFile>)> {
    let (socket, address, file) = listener.into_parts();
    let tcp = socket
        .local_addr()
        .map(|a| a.as_socket().is_some())
        .unwrap_or(false);
    let socket = Async::new(socket)?;
    crate::log::write(
        crate::log::Level::Info,
        true,
        format_args!("listening on {address}"),
    );
    let stream = futures_lite::stream::unfold(
        (socket, None::<OwnedFd>),
        move |(socket, mut reserve)| async move {
            let accepted = accept(&socket, &mut reserve, tcp).await;
            Some((accepted, (socket, reserve)))
        },
    );
    Ok((Box::pin(stream), file))
}

/// Accepts one client once a descriptor is reserved for its socket towards
/// CONNECT; without one, the client stays in the backlog.
async fn accept(
    socket: &Async<Socket>,
    reserve: &mut Option<OwnedFd>,
    tcp: bool,
) -> io::Result<Accepted> {
    if reserve.is_none() {
        match socket.get_ref().as_fd().try_clone_to_owned() {
            Ok(fd) => *reserve = Some(fd),
            Err(e) => {
                // Pooled pipes are a luxury next to a waiting client.
                crate::pipe::release_pool();
                return Err(io::Error::other(NoDescriptorToSpare(e)));
            }
        }
    }
    let (client, peer) = socket
        .read_with(|s| s.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC))
        .await?;
    Ok(Accepted {
        socket: client,
        peer: peer.as_socket(),
        tcp,
        reserve: reserve.take(),
    })
}

/// Why the loop does not accept now: the client would get no socket
/// towards CONNECT.
#[derive(Debug)]
struct NoDescriptorToSpare(io::Error);

impl std::fmt::Display for NoDescriptorToSpare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no descriptor to spare for another client ({}): new clients wait in the backlog until a connection ends",
            self.0
        )
    }
}

impl std::error::Error for NoDescriptorToSpare {}

/// Logs accept errors that are not transient, at most once per interval,
/// with the count of those not logged.
fn rate_limited_accept_warning() -> impl FnMut(&io::Error) {
    let mut throttle = crate::log::Throttle::new(ACCEPT_ERROR_LOG_INTERVAL);
    move |error| {
        let Some(held_back) = throttle.allow() else {
            return;
        };
        if error
            .get_ref()
            .is_some_and(|e| e.downcast_ref::<NoDescriptorToSpare>().is_some())
        {
            crate::warn!(
                "accepting paused: {error}{}",
                crate::log::held_back(held_back)
            );
            return;
        }
        let hint = hint(error);
        crate::warn!(
            "accept failed: {error}{}{}; retrying",
            if hint.is_empty() {
                String::new()
            } else {
                format!(". {hint}")
            },
            crate::log::held_back(held_back)
        );
    }
}
