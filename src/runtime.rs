//! Everything that depends on the async runtime (async-std), in one place.
//!
//! The relay runs on a single thread: the accept loop and every connection
//! are tasks of the thread that called [`block_on`], so readiness events are
//! handled where the task runs. With async-std's multi-threaded executor,
//! each message woke another thread (5.5 context switches per 64-byte round
//! trip instead of 2, 40 % more CPU per connection; docs/bench-profile.md).
//! The reactor underneath is async-io, which the data path uses directly.

use std::future::Future;

/// Runs `future` to completion on this thread, with the tasks it spawns.
/// It runs as a task of its own: the executor polls its main future on
/// every wake-up of the thread, and the accept loop should be polled only
/// when it is woken, not for every relayed message (+12-16 µs per round
/// trip otherwise).
pub fn block_on<T: 'static>(future: impl Future<Output = T> + 'static) -> T {
    async_std::task::block_on(spawn(future))
}

/// Runs `future` as a task of the [`block_on`] thread; it keeps running
/// when the returned handle is dropped.
pub fn spawn<T: 'static>(
    future: impl Future<Output = T> + 'static,
) -> async_std::task::JoinHandle<T> {
    async_std::task::spawn_local(future)
}

/// Starts the reactor under the runtime now, so that a failure (no
/// descriptor left for its epoll instance, say) is an error to report
/// rather than a panic in the first task that needs it.
pub fn start_reactor() -> std::io::Result<()> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(|| {
        let (probe, _peer) = std::os::unix::net::UnixStream::pair()?;
        async_io::Async::new(probe).map(drop)
    });
    std::panic::set_hook(quiet);
    match started {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            // async-io's message ends with the error, as Debug.
            let errno = why
                .split("code: ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.trim().parse::<i32>().ok());
            Err(match errno {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::other(why),
            })
        }
    }
}
