//! Who is on the other end of an accepted connection, and whether it may
//! come in: peer credentials and supplementary groups of a Unix client, the
//! allowlist they are judged by (`--allow-uid`, `--allow-gid`, with user
//! and group names looked up in the system's databases), and the line that
//! names a client in the log.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;

use std::net::SocketAddr;

use socket2::Socket;

/// A client's peer credentials (`SO_PEERCRED`) on a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// 0 when the client runs in a PID namespace the relay cannot see into;
    /// the uid and gid are still the client's.
    pub pid: libc::pid_t,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Reads `SO_PEERCRED`. The kernel records it at `connect()`, so it is
/// there even if the client is already gone; TCP sockets have none.
/// (Not rustix's `socket_peercred`: its `UCred` holds a non-zero `Pid`, and
/// the kernel reports pid 0 for a client in another PID namespace.)
pub fn credentials(socket: &Socket) -> io::Result<Credentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one `ucred` into `cred`; `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Credentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// A Unix client's supplementary groups (`SO_PEERGROUPS`), however many:
/// the kernel says how much room it needs (`ERANGE`) and the call is made
/// again with that much.
pub fn groups(socket: &Socket) -> io::Result<Vec<libc::gid_t>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: SO_PEERGROUPS writes at most `len` bytes of gids into the
        // vector and sets `len` to the bytes written (or needed, on ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) {
            return Err(error);
        }
        // The group list may have grown between the calls: never shrink.
        groups.resize(count.max(groups.len() * 2), 0);
    }
}

/// `192.0.2.1:5678`, `[2001:db8::1]:5678` (the address `accept` returned),
/// or `pid 42 uid 1000 gid 100` for a Unix client.
pub fn describe(socket: &Socket, address: Option<SocketAddr>) -> String {
    if let Some(ip) = address {
        return ip.to_string();
    }
    match credentials(socket) {
        Ok(c) => format!("pid {} uid {} gid {}", c.pid, c.uid, c.gid),
        Err(_) => "unix client".into(),
    }
}

/// Which Unix clients may connect (`--allow-uid`, `--allow-gid`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub uids: Vec<libc::uid_t>,
    pub gids: Vec<libc::gid_t>,
}

impl Allowlist {
    /// Whether any restriction is configured.
    pub fn is_active(&self) -> bool {
        !self.uids.is_empty() || !self.gids.is_empty()
    }

    /// Whether a client with these credentials (and supplementary groups)
    /// may connect.
    pub fn allows(&self, credentials: &Credentials, groups: &[libc::gid_t]) -> bool {
        !self.is_active()
            || self.uids.contains(&credentials.uid)
            || self.gids.contains(&credentials.gid)
            || groups.iter().any(|g| self.gids.contains(g))
    }
}

/// Checks a Unix client against `--allow-uid`/`--allow-gid`, before
/// CONNECT is contacted, by its uid, its primary group and every
/// supplementary group the kernel reports. A client that cannot be judged
/// is refused; a refusal is logged.
pub fn admitted(allow: &Allowlist, socket: &Socket) -> bool {
    let credentials = match credentials(socket) {
        Ok(credentials) => credentials,
        Err(e) => {
            crate::warn!("refused a client whose credentials cannot be read: {e}");
            return false;
        }
    };
    let who = format!(
        "client pid {} uid {} gid {}",
        credentials.pid, credentials.uid, credentials.gid
    );
    if allow.allows(&credentials, &[]) {
        return true;
    }
    if !allow.gids.is_empty() {
        match groups(socket) {
            Ok(groups) if allow.allows(&credentials, &groups) => return true,
            Ok(_) => {}
            Err(e) => {
                crate::warn!("refused {who}: its supplementary groups cannot be read: {e}");
                return false;
            }
        }
    }
    crate::warn!("refused {who}: not allowed by --allow-uid/--allow-gid");
    false
}

/// The id of the user named `name` in the system's user database
/// (`getpwnam_r`); `None`: no such user.
pub fn user_id(name: &CStr) -> io::Result<Option<libc::uid_t>> {
    // SAFETY: every pointer is valid for the duration of the call and the
    // buffer length is passed; the result points into the record or is null.
    let found = lookup_record(name, |n, u, b, l, r| unsafe {
        libc::getpwnam_r(n, u, b, l, r)
    });
    found.map(|user| user.map(|u: libc::passwd| u.pw_uid))
}

/// The id of the group named `name` in the system's group database
/// (`getgrnam_r`); `None`: no such group.
pub fn group_id(name: &CStr) -> io::Result<Option<libc::gid_t>> {
    // SAFETY: as in user_id.
    let found = lookup_record(name, |n, g, b, l, r| unsafe {
        libc::getgrnam_r(n, g, b, l, r)
    });
    found.map(|group| group.map(|g: libc::group| g.gr_gid))
}

/// Calls a `get*nam_r` function with a buffer that grows on ERANGE until
/// the record fits: a group with thousands of members (LDAP, say) is
/// still found. `Ok(None)`: no such entry.
fn lookup_record<T>(
    name: &CStr,
    call: impl Fn(*const libc::c_char, *mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
) -> Result<Option<T>, std::io::Error> {
    let mut size = 16 << 10;
    loop {
        let mut record = std::mem::MaybeUninit::<T>::uninit();
        let mut buffer = vec![0 as libc::c_char; size];
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(
            name.as_ptr(),
            record.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        );
        match rc {
            0 if result.is_null() => return Ok(None),
            // SAFETY: the call succeeded and filled `record`; only its id
            // field is read, which does not point into the buffer.
            0 => return Ok(Some(unsafe { record.assume_init() })),
            libc::ERANGE if size < 64 << 20 => size *= 4,
            rc => return Err(std::io::Error::from_raw_os_error(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist() {
        let c = Credentials {
            pid: 1,
            uid: 1000,
            gid: 100,
        };
        assert!(Allowlist::default().allows(&c, &[]));
        assert!(
            Allowlist {
                uids: vec![1000],
                gids: vec![]
            }
            .allows(&c, &[])
        );
        assert!(
            Allowlist {
                uids: vec![],
                gids: vec![100]
            }
            .allows(&c, &[])
        );
        assert!(
            Allowlist {
                uids: vec![],
                gids: vec![27]
            }
            .allows(&c, &[27])
        );
        assert!(
            !Allowlist {
                uids: vec![0],
                gids: vec![0]
            }
            .allows(&c, &[4, 24])
        );
    }
}
