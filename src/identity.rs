//! Who is connecting: the PROXY protocol header that tells CONNECT the
//! client's address (HAProxy's specification, v1 text and v2 binary), and the
//! peer-credential allowlist for Unix listeners.

use std::net::{IpAddr, SocketAddr};

use crate::peer::Credentials;

/// Which PROXY protocol version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Builds the header for a client at `source` that connected to `destination`
/// (the listener's local address). Without two IP addresses (a Unix client),
/// v1 says `UNKNOWN` and v2 sends a `LOCAL` command.
pub fn proxy_header(
    version: ProxyVersion,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
) -> Vec<u8> {
    let addresses = source.zip(destination).map(|(s, d)| same_family(s, d));
    match version {
        ProxyVersion::V1 => match addresses {
            Some((s, d)) => {
                let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes()
            }
            None => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        ProxyVersion::V2 => {
            let mut header = V2_SIGNATURE.to_vec();
            match addresses {
                Some((s, d)) => {
                    header.push(0x21); // version 2, PROXY
                    let mut body = Vec::with_capacity(36);
                    match (s.ip(), d.ip()) {
                        (IpAddr::V4(si), IpAddr::V4(di)) => {
                            header.push(0x11); // AF_INET, STREAM
                            body.extend_from_slice(&si.octets());
                            body.extend_from_slice(&di.octets());
                        }
                        (IpAddr::V6(si), IpAddr::V6(di)) => {
                            header.push(0x21); // AF_INET6, STREAM
                            body.extend_from_slice(&si.octets());
                            body.extend_from_slice(&di.octets());
                        }
                        _ => unreachable!("same_family returns one family"),
                    }
                    body.extend_from_slice(&s.port().to_be_bytes());
                    body.extend_from_slice(&d.port().to_be_bytes());
                    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
                    header.extend_from_slice(&body);
                }
                None => {
                    header.push(0x20); // version 2, LOCAL
                    header.push(0x00); // AF_UNSPEC
                    header.extend_from_slice(&0u16.to_be_bytes());
                }
            }
            header
        }
    }
}

/// Puts both addresses in one family: IPv4-mapped IPv6 addresses (a dual
/// stack listener's IPv4 clients) become IPv4 when both are; otherwise an
/// IPv4 address becomes IPv4-mapped IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    };
    let (s, d) = (unmap(source), unmap(destination));
    let map = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (map(s), map(d))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn v1_forms() {
        let h = proxy_header(
            ProxyVersion::V1,
            addr("192.0.2.1:5678"),
            addr("127.0.0.1:80"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 127.0.0.1 5678 80\r\n");
        let h = proxy_header(
            ProxyVersion::V1,
            addr("[2001:db8::1]:5678"),
            addr("[::1]:80"),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 5678 80\r\n");
        let h = proxy_header(
            ProxyVersion::V1,
            addr("[::ffff:192.0.2.1]:5678"),
            addr("[::ffff:127.0.0.1]:80"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 127.0.0.1 5678 80\r\n");
        let h = proxy_header(
            ProxyVersion::V1,
            addr("[::ffff:192.0.2.1]:5678"),
            addr("[::1]:80"),
        );
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5678 80\r\n");
        assert_eq!(
            proxy_header(ProxyVersion::V1, None, None),
            b"PROXY UNKNOWN\r\n"
        );
    }

    #[test]
    fn v2_forms() {
        let h = proxy_header(
            ProxyVersion::V2,
            addr("192.0.2.1:5678"),
            addr("127.0.0.1:80"),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 127, 0, 0, 1, 0x16, 0x2e, 0, 80,
        ]);
        assert_eq!(h, want);
        let h = proxy_header(ProxyVersion::V2, addr("[::1]:1"), addr("[::1]:2"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        let h = proxy_header(ProxyVersion::V2, None, None);
        assert_eq!(&h[12..], &[0x20, 0x00, 0, 0]);
    }

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
