//! Descriptors this process inherited, taken once: socket activation's and
//! the file descriptor store's (`LISTEN_FDS`, named by `LISTEN_FDNAMES`),
//! and those named by number on the command line (`fd:N`, `--ready-fd`).
//! This is the one place that turns a descriptor number into an owned
//! descriptor; everything after it (listeners, adopted connections) takes
//! them from here by value, so no two parts can own one descriptor, and
//! none needs to trust another's filter.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first descriptor socket activation passes.
const FIRST: RawFd = 3;

/// One descriptor passed by socket activation or the store.
#[derive(Debug)]
pub struct Passed {
    /// Its number, for messages and for `fd:N`.
    pub number: RawFd,
    /// Its `LISTEN_FDNAMES` entry (`unknown` without one).
    pub name: String,
    /// `None`: the number was passed but is not open.
    pub fd: Option<OwnedFd>,
}

/// The descriptors `LISTEN_FDS` passes, by number and name, without taking
/// them. `LISTEN_PID`, when set, must be this process (the variables may
/// have been meant for a parent); without it the descriptors are taken, as
/// the listenfd crate does for systemfd `--no-pid`.
pub fn listed() -> Result<Vec<(RawFd, String)>, String> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    if let Ok(pid) = std::env::var("LISTEN_PID")
        && crate::endpoint::parse_number::<u32>(&pid) != Some(std::process::id())
    {
        return Ok(Vec::new());
    }
    let count = crate::endpoint::parse_number::<RawFd>(&count)
        .filter(|n| *n <= 1 << 20)
        .ok_or_else(|| format!("LISTEN_FDS='{count}' is not a count of descriptors"))?;
    let names: Vec<String> = match std::env::var("LISTEN_FDNAMES") {
        // As sd_listen_fds_with_names(3): a name for every descriptor, or
        // the environment is not to be trusted (EINVAL there).
        Ok(names) => {
            let names: Vec<String> = names.split(':').map(str::to_owned).collect();
            if names.len() != count as usize {
                return Err(format!(
                    "LISTEN_FDNAMES names {} descriptor{} but LISTEN_FDS passes {count}",
                    names.len(),
                    if names.len() == 1 { "" } else { "s" }
                ));
            }
            names
        }
        Err(_) => Vec::new(),
    };
    Ok((0..count)
        .map(|i| {
            let name = names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            (FIRST + i, name)
        })
        .collect())
}

/// Takes every descriptor `LISTEN_FDS` passes ([`listed`]). Call once, at
/// the start.
pub fn take_all() -> Result<Vec<Passed>, String> {
    Ok(listed()?
        .into_iter()
        .map(|(number, name)| Passed {
            fd: take(number),
            number,
            name,
        })
        .collect())
}

/// Takes descriptor `number`, named on the command line; `None` if it is
/// not open. It is closed on exec from now on.
pub fn take(number: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if number < 0 || unsafe { libc::fcntl(number, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open, and nothing else in this process owns
    // it: it was inherited, and this module hands each number out once
    // (`take_all` at the start; a number on the command line is refused
    // when it is one of those, see `crate::cli`).
    let fd = unsafe { OwnedFd::from_raw_fd(number) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Some(fd)
}

/// Takes the passed descriptors for which `wanted` says yes, in order.
pub fn claim(passed: &mut Vec<Passed>, mut wanted: impl FnMut(&Passed) -> bool) -> Vec<Passed> {
    let (claimed, rest) = std::mem::take(passed).into_iter().partition(|p| wanted(p));
    *passed = rest;
    claimed
}
