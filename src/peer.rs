//! Who is on the other end of an accepted connection, for log lines.

use std::os::fd::AsRawFd;

use socket2::Socket;

/// A client's peer credentials (`SO_PEERCRED`) on a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub pid: libc::pid_t,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Reads `SO_PEERCRED`; `None` on sockets that have none (TCP).
pub fn credentials(socket: &Socket) -> Option<Credentials> {
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
    (rc == 0 && cred.pid != 0).then_some(Credentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// A Unix client's supplementary groups (`SO_PEERGROUPS`); empty if unknown.
pub fn groups(socket: &Socket) -> Vec<libc::gid_t> {
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: SO_PEERGROUPS writes at most `len` bytes of gids into the
    // vector and sets `len` to the bytes written.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

/// `192.0.2.1:5678`, `[2001:db8::1]:5678`, or `pid 42 uid 1000` for a Unix client.
pub fn describe(socket: &Socket) -> String {
    if let Some(ip) = socket.peer_addr().ok().and_then(|a| a.as_socket()) {
        return ip.to_string();
    }
    match credentials(socket) {
        Some(c) => format!("pid {} uid {} gid {}", c.pid, c.uid, c.gid),
        None => "unix client".into(),
    }
}
