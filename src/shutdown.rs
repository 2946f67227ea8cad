//! SIGTERM and SIGINT, turned into events the accept loop can wait for.
//!
//! The handlers are installed before the sandbox and before any thread
//! exists; they only write a byte into a socket pair, which the loop reads.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;

use async_io::Async;
use signal_hook::consts::{SIGINT, SIGTERM};

/// The read end of the signal pipe.
pub struct Signals {
    read: UnixStream,
}

impl Signals {
    /// Installs the handlers. From now on SIGTERM/SIGINT no longer kill the
    /// process; they are queued for [`AsyncSignals::next`].
    pub fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        signal_hook::low_level::pipe::register(SIGTERM, write.try_clone()?)?;
        signal_hook::low_level::pipe::register(SIGINT, write)?;
        Ok(Signals { read })
    }

    /// Registers the pipe with the reactor (starts the runtime's threads).
    pub fn into_async(self) -> io::Result<AsyncSignals> {
        Ok(AsyncSignals {
            read: Async::new(self.read)?,
        })
    }
}

/// Signals, awaitable.
pub struct AsyncSignals {
    read: Async<UnixStream>,
}

impl AsyncSignals {
    /// Waits for the next SIGTERM or SIGINT.
    pub async fn next(&self) {
        let mut byte = [0u8; 1];
        // Each signal writes one byte; an error here would mean the pipe is
        // gone, and then waiting forever is the right answer.
        while self
            .read
            .read_with(|mut s| s.read(&mut byte))
            .await
            .is_err()
        {
            futures_lite::future::pending::<()>().await;
        }
    }
}
