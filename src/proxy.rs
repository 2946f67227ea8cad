//! The PROXY protocol encoder: the header that tells CONNECT who the client
//! is (HAProxy's specification, v1 text and v2 binary).

use std::net::{IpAddr, SocketAddr};

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
pub fn header(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn v1_forms() {
        let h = header(
            ProxyVersion::V1,
            addr("192.0.2.1:5678"),
            addr("127.0.0.1:80"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 127.0.0.1 5678 80\r\n");
        let h = header(
            ProxyVersion::V1,
            addr("[2001:db8::1]:5678"),
            addr("[::1]:80"),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::1 5678 80\r\n");
        let h = header(
            ProxyVersion::V1,
            addr("[::ffff:192.0.2.1]:5678"),
            addr("[::ffff:127.0.0.1]:80"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 127.0.0.1 5678 80\r\n");
        let h = header(
            ProxyVersion::V1,
            addr("[::ffff:192.0.2.1]:5678"),
            addr("[::1]:80"),
        );
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5678 80\r\n");
        assert_eq!(header(ProxyVersion::V1, None, None), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_forms() {
        let h = header(
            ProxyVersion::V2,
            addr("192.0.2.1:5678"),
            addr("127.0.0.1:80"),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 127, 0, 0, 1, 0x16, 0x2e, 0, 80,
        ]);
        assert_eq!(h, want);
        let h = header(ProxyVersion::V2, addr("[::1]:1"), addr("[::1]:2"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        let h = header(ProxyVersion::V2, None, None);
        assert_eq!(&h[12..], &[0x20, 0x00, 0, 0]);
    }
}

/// PROXY headers read back by a parser written from the HAProxy
/// specification alone (not from the encoder above), for random IPv4, IPv6
/// and IPv4-mapped clients and listeners, and for Unix clients.
#[cfg(test)]
mod read_back {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// What a header says: `None` for UNKNOWN (v1) or LOCAL (v2).
    type Said = Option<(SocketAddr, SocketAddr)>;

    fn parse_v1(header: &[u8]) -> Result<Said, String> {
        let text = std::str::from_utf8(header).map_err(|e| e.to_string())?;
        if header.len() > 107 {
            return Err("longer than 107 bytes".into());
        }
        let line = text.strip_suffix("\r\n").ok_or("no CRLF at the end")?;
        if line.contains('\r') || line.contains('\n') {
            return Err("CR or LF inside".into());
        }
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["PROXY", "UNKNOWN", ..] => Ok(None),
            ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
                let port = |p: &str| -> Result<u16, String> {
                    if p.len() > 1 && p.starts_with('0') || p.is_empty() {
                        return Err(format!("port '{p}' has a leading zero"));
                    }
                    p.parse().map_err(|_| format!("port '{p}'"))
                };
                let ip = |a: &str| -> Result<IpAddr, String> {
                    if *family == "TCP4" {
                        a.parse::<Ipv4Addr>()
                            .map(IpAddr::V4)
                            .map_err(|e| e.to_string())
                    } else {
                        a.parse::<Ipv6Addr>()
                            .map(IpAddr::V6)
                            .map_err(|e| e.to_string())
                    }
                };
                Ok(Some((
                    SocketAddr::new(ip(src)?, port(sport)?),
                    SocketAddr::new(ip(dst)?, port(dport)?),
                )))
            }
            _ => Err(format!("not a PROXY line: {line:?}")),
        }
    }

    fn parse_v2(header: &[u8]) -> Result<Said, String> {
        let signature = b"\r\n\r\n\0\r\nQUIT\n";
        if header.len() < 16 || &header[..12] != signature {
            return Err("no signature".into());
        }
        let (version, command) = (header[12] >> 4, header[12] & 0xf);
        if version != 2 {
            return Err(format!("version {version}"));
        }
        let length = u16::from_be_bytes([header[14], header[15]]) as usize;
        let body = &header[16..];
        if body.len() != length {
            return Err(format!("length {length}, body {}", body.len()));
        }
        match (command, header[13]) {
            (0, _) => Ok(None),
            (1, 0x11) if length >= 12 => {
                let ip = |i: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        body[i],
                        body[i + 1],
                        body[i + 2],
                        body[i + 3],
                    ))
                };
                let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
                Ok(Some((
                    SocketAddr::new(ip(0), port(8)),
                    SocketAddr::new(ip(4), port(10)),
                )))
            }
            (1, 0x21) if length >= 36 => {
                let ip = |i: usize| {
                    let octets: [u8; 16] = body[i..i + 16].try_into().unwrap();
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
                Ok(Some((
                    SocketAddr::new(ip(0), port(32)),
                    SocketAddr::new(ip(16), port(34)),
                )))
            }
            (c, f) => Err(format!("command {c}, family {f:#x}")),
        }
    }

    /// What the header must say for a client at `source` on a listener at
    /// `destination`: IPv4 when both are IPv4 (IPv4-mapped counts), else
    /// both as IPv6; a Unix client has no address.
    fn expected(source: Option<SocketAddr>, destination: Option<SocketAddr>) -> Said {
        let (s, d) = (source?, destination?);
        let v4 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let v6 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Some(match (v4(s), v4(d)) {
            (Some(si), Some(di)) => (
                SocketAddr::new(IpAddr::V4(si), s.port()),
                SocketAddr::new(IpAddr::V4(di), d.port()),
            ),
            _ => (
                SocketAddr::new(IpAddr::V6(v6(s)), s.port()),
                SocketAddr::new(IpAddr::V6(v6(d)), d.port()),
            ),
        })
    }

    fn address() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip.into()), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(ip.into()), port)),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(
                IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped()),
                port
            )),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn every_header_reads_back_as_the_client_and_the_listener(
            source in proptest::option::weighted(0.9, address()),
            destination in proptest::option::weighted(0.9, address()),
        ) {
            let want = expected(source, destination);
            let v1 = header(ProxyVersion::V1, source, destination);
            prop_assert_eq!(parse_v1(&v1), Ok(want), "{:?}", String::from_utf8_lossy(&v1));
            let v2 = header(ProxyVersion::V2, source, destination);
            prop_assert_eq!(parse_v2(&v2), Ok(want), "{:?}", v2);
        }
    }
}
