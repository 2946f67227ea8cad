//! SIGTERM and SIGINT (stop) and SIGUSR2 (hand over to the next instance),
//! turned into requests the accept loop can wait for, and SIGHUP, which only
//! logs a line: the relay has no configuration to reload, and a closed
//! terminal or a stray `kill -HUP` must not kill it uncleanly (leaving its
//! socket file behind).
//!
//! The handlers are installed before the sandbox and before any thread
//! exists; they only write a byte into a socket pair, which a task reads.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

use async_io::Async;
use futures_lite::future;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};

/// What a signal asks of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM, SIGINT: stop accepting, drain, exit.
    Stop,
    /// SIGUSR2 (`systemctl reload`): hand every connection to the next
    /// instance through systemd's file descriptor store, and exit for it.
    HandOver,
}

/// The read ends of the signal pipes.
pub struct Signals {
    read: UnixStream,
    hand_over: UnixStream,
    hangup: UnixStream,
}

impl Signals {
    /// Installs the handlers. From now on SIGTERM/SIGINT no longer kill the
    /// process; they are queued for [`Signals::into_async`]'s receiver.
    pub fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(SIGTERM, write.try_clone()?)?;
        signal_hook::low_level::pipe::register(SIGINT, write)?;
        let (hand_over, write) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(SIGUSR2, write)?;
        let (hangup, write) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(SIGHUP, write)?;
        Ok(Signals {
            read,
            hand_over,
            hangup,
        })
    }

    /// Registers the pipes with the reactor and forwards each signal, as one
    /// request on the returned channel, from tasks of their own, so that
    /// waiting for a signal costs the accept loop no system call when it
    /// wakes for other reasons.
    pub fn into_async(self) -> io::Result<async_channel::Receiver<Request>> {
        let (sender, receiver) = async_channel::unbounded();
        forward(Async::new(self.read)?, Request::Stop, sender.clone());
        forward(Async::new(self.hand_over)?, Request::HandOver, sender);
        let hangup = Async::new(self.hangup)?;
        crate::runtime::spawn(async move {
            let mut bytes = [0u8; 16];
            while hangup.read_with(|mut s| s.read(&mut bytes)).await.is_ok() {
                crate::info!(
                    "SIGHUP: nothing to reload, still serving (SIGTERM or SIGINT stops the relay, SIGUSR2 hands it over to a new instance)"
                );
            }
        });
        Ok(receiver)
    }
}

/// Sends `request` for every signal that arrives on `pipe` (each writes
/// one byte; the pipe never ends).
fn forward(pipe: Async<UnixStream>, request: Request, to: async_channel::Sender<Request>) {
    crate::runtime::spawn(async move {
        let mut bytes = [0u8; 16];
        while let Ok(n) = pipe.read_with(|mut s| s.read(&mut bytes)).await {
            for _ in 0..n {
                if to.send(request).await.is_err() {
                    return;
                }
            }
        }
    });
}

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
    pub async fn next(&self) -> Request {
        match self.0.recv().await {
            Ok(request) => request,
            Err(_) => future::pending().await,
        }
    }

    /// Waits for the next stop request, once the relay is stopping or
    /// handing over already.
    pub async fn next_stop(&self) {
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
