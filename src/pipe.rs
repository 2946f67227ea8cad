//! Pipes for the zero-copy data path, and the `splice(2)` call that uses
//! them. Pipes are pooled: a direction takes one while bytes are in flight
//! and gives it back empty, so idle connections hold none and busy ones do
//! not pay `pipe2` + `fcntl` per message.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Pipe capacity asked for. Bigger pipes mean fewer system calls per byte,
/// but an unprivileged user may own only 64 MiB of pipes in all
/// (`fs.pipe-user-pages-soft`); past that the kernel refuses to grow them
/// and new pipes get 8 KiB. 256 KiB costs no more CPU per byte than 1 MiB
/// here and lets four times as many transfers run at full speed.
const WANTED_CAPACITY: usize = 256 << 10;
/// A pipe the kernel would not grow to at least this is not worth using:
/// that burst goes through a buffer instead.
const USEFUL_CAPACITY: usize = 64 << 10;
/// Empty pipes kept for reuse (they save `pipe2` + `fcntl` for short
/// messages); more are closed.
const POOL_MAX: usize = 8;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// An empty (when pooled) pipe.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: u32,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own, integer arguments only.
        let capacity = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                WANTED_CAPACITY as libc::c_int,
            );
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = u32::try_from(capacity).unwrap_or(0).max(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The end `splice` reads from.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The end `splice` writes into.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// How many bytes fit.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

/// An empty pipe from the pool, or a new one; `None` if the kernel would
/// only give a small one (the per-user pipe budget is spent).
pub fn take() -> io::Result<Option<Pipe>> {
    if let Some(pipe) = POOL.lock().expect("pipe pool").pop() {
        return Ok(Some(pipe));
    }
    let pipe = Pipe::new()?;
    Ok((pipe.capacity() >= USEFUL_CAPACITY).then_some(pipe))
}

/// Returns an empty pipe to the pool.
pub fn give(pipe: Pipe) {
    let mut pool = POOL.lock().expect("pipe pool");
    if pool.len() < POOL_MAX {
        pool.push(pipe);
    }
}

/// One non-blocking `splice(2)` of at most `len` bytes.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (both are sockets or pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
