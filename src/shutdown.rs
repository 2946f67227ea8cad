//! SIGTERM and SIGINT, turned into events the accept loop can wait for, and
//! SIGHUP, which only logs a line: the relay has no configuration to reload,
//! and a closed terminal or a stray `kill -HUP` must not kill it uncleanly
//! (leaving its socket file behind).
//!
//! The handlers are installed before the sandbox and before any thread
//! exists; they only write a byte into a socket pair, which a task reads.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

use async_io::Async;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The read ends of the signal pipes.
pub struct Signals {
    read: UnixStream,
    hangup: UnixStream,
}

impl Signals {
    /// Installs the handlers. From now on SIGTERM/SIGINT no longer kill the
    /// process; they are queued for [`Signals::into_async`]'s receiver.
    pub fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(SIGTERM, write.try_clone()?)?;
        signal_hook::low_level::pipe::register(SIGINT, write)?;
        let (hangup, write) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(SIGHUP, write)?;
        Ok(Signals { read, hangup })
    }

    /// Registers the pipe with the reactor and forwards each signal, as one
    /// stop request on the returned channel, from a
    /// task of its own, so that waiting for a signal costs the accept loop
    /// no system call when it wakes for other reasons.
    pub fn into_async(self) -> io::Result<async_channel::Receiver<()>> {
        let read = Async::new(self.read)?;
        let hangup = Async::new(self.hangup)?;
        crate::runtime::spawn(async move {
            let mut bytes = [0u8; 16];
            while hangup.read_with(|mut s| s.read(&mut bytes)).await.is_ok() {
                crate::info!(
                    "SIGHUP: nothing to reload, still serving (SIGTERM or SIGINT stops the relay)"
                );
            }
        });
        let (sender, receiver) = async_channel::unbounded();
        crate::runtime::spawn(async move {
            let mut bytes = [0u8; 16];
            // Each signal writes one byte; the pipe never ends.
            while let Ok(n) = read.read_with(|mut s| s.read(&mut bytes)).await {
                for _ in 0..n {
                    if sender.send(()).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }
}
