//! Everything that depends on the async runtime, in one place: a local
//! executor (async-executor) on the reactor of async-io, the parts that
//! async-std itself was made of (async-std is discontinued,
//! RUSTSEC-2025-0052).
//!
//! The relay runs on a single thread: the accept loop and every connection
//! are tasks of the thread that called [`block_on`], so readiness events are
//! handled where the task runs. With a multi-threaded executor, each message
//! woke another thread (measured in docs/bench-profile.md). The data path
//! uses the reactor directly, and moves bytes on an engine thread of its own
//! (`crate::engine`).

use std::future::Future;
use std::rc::Rc;

use async_executor::LocalExecutor;

thread_local! {
    /// The tasks of this thread, which run while [`block_on`] does.
    static EXECUTOR: Rc<LocalExecutor<'static>> = Rc::new(LocalExecutor::new());
}

/// Runs `future` to completion on this thread, with the tasks spawned here
/// (before it too). It runs as a task of its own: the executor would
/// otherwise poll its main future on every wake-up of the thread, and the
/// accept loop should be polled only when it is woken, not for every
/// relayed message.
pub fn block_on<T: 'static>(future: impl Future<Output = T> + 'static) -> T {
    let executor = EXECUTOR.with(Rc::clone);
    let main = executor.spawn(future);
    async_io::block_on(executor.run(main))
}

/// Runs `future` as a task of this thread until it ends: from the next
/// [`block_on`] on, or at once within it.
pub fn spawn(future: impl Future<Output = ()> + 'static) {
    EXECUTOR.with(|executor| executor.spawn(future).detach());
}

/// Starts the reactor under the runtime now, so that a failure (no
/// descriptor left for its epoll instance, say) is an error to report
/// rather than a panic in the first task that needs it.
pub fn start_reactor() -> std::io::Result<()> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(|| {
        // An eventfd: the sandbox lets the relay create one from now on
        // (as the reactor does), and nothing else in it competes for it.
        let probe = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
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
