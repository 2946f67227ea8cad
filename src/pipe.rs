//! Pipes for the zero-copy data path, and the `splice(2)` call that uses
//! them. Pipes are pooled: a direction takes one while bytes are in flight
//! and gives it back empty, so idle connections hold none and busy ones do
//! not pay `pipe2` + `fcntl` per message.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use rustix::pipe::{PipeFlags, SpliceFlags};

/// Pipe capacity asked for. Bigger pipes mean fewer system calls per byte,
/// but an unprivileged user may own only 64 MiB of pipes in all
/// (`fs.pipe-user-pages-soft`, by default); past that the kernel refuses to
/// grow them and new pipes get two pages. Bigger pipes than this saved no
/// CPU per byte when measured, and fewer of them fit in that budget, so
/// fewer transfers run at full speed (docs/bench-profile.md, section 4).
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
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Refused past the user's pipe budget: the pipe keeps its default size.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, WANTED_CAPACITY);
        let capacity = rustix::pipe::fcntl_getpipe_size(&write).unwrap_or(4096);
        Ok(Pipe {
            read,
            write,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        })
    }

    /// The end `splice` reads from.
    pub fn read_end(&self) -> impl AsFd + '_ {
        &self.read
    }

    /// The end `splice` writes into.
    pub fn write_end(&self) -> impl AsFd + '_ {
        &self.write
    }

    /// The read end, to be stored for the next instance.
    pub fn read_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The write end, to be stored for the next instance.
    pub fn write_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.write.as_fd()
    }

    /// A pipe a previous instance stored, from its two ends, and how many
    /// bytes it holds.
    pub fn from_ends(read: OwnedFd, write: OwnedFd) -> io::Result<(Pipe, u32)> {
        let capacity = rustix::pipe::fcntl_getpipe_size(&write)?;
        let len = rustix::io::ioctl_fionread(&read)?;
        let pipe = Pipe {
            read,
            write,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        };
        Ok((pipe, u32::try_from(len).unwrap_or(u32::MAX)))
    }

    /// How many bytes fit.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

/// An empty pipe from the pool, or a new one; `None` if none can be had
/// (descriptors or memory are short: EMFILE, ENFILE, ENOMEM) or the kernel
/// would only give a small one (the per-user pipe budget is spent). The
/// caller then copies through a buffer: a connection never fails for want
/// of a pipe.
pub fn take() -> Option<Pipe> {
    if let Some(pipe) = POOL.lock().expect("pipe pool").pop() {
        return Some(pipe);
    }
    Pipe::new()
        .ok()
        .filter(|pipe| pipe.capacity() >= USEFUL_CAPACITY)
}

/// A pipe holding `bytes` (at most the 64 KiB a useful pipe holds).
pub fn filled(bytes: &[u8]) -> io::Result<Pipe> {
    let pipe = take().ok_or_else(|| io::Error::other("no pipe to be had"))?;
    let mut rest = bytes;
    while !rest.is_empty() {
        match rustix::io::write(&pipe.write, rest) {
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pipe)
}

/// Closes the pooled pipes, giving their descriptors back (when the relay
/// is out of descriptors, clients come first).
pub fn release_pool() {
    POOL.lock().expect("pipe pool").clear();
}

/// Returns an empty pipe to the pool.
pub fn give(pipe: Pipe) {
    let mut pool = POOL.lock().expect("pipe pool");
    if pool.len() < POOL_MAX {
        pool.push(pipe);
    }
}

/// One non-blocking `splice(2)` of at most `len` bytes.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    Ok(rustix::pipe::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
    )?)
}
