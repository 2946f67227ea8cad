//! Who is on the other end of an accepted connection: peer credentials and
//! supplementary groups of a Unix client, and the line that names a client
//! in the log.

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
