//! The host's socket table, for two questions: which connections are already open on a port when
//! it starts being watched (so `connections_active` is right from the first scrape), and what
//! listens on a tunnel's port (for its health). Asked through netlink `sock_diag` with a state
//! filter, so the kernel skips the TIME_WAIT crowd of a busy host; /proc/net/{tcp,udp}{,6} when
//! netlink is not available.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use moonfrp_common::{Proto, tcp_state};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    Parseable,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// One socket: its addresses and its kernel state number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sock {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
}

/// Open connections per local port among `ports`. A connection counts once even if a table
/// listed it twice (/proc/net/tcp can, when sockets come and go during the read).
pub fn count_open(socks: &[Sock], ports: &[u16]) -> HashMap<u16, u64> {
    let mut out: HashMap<u16, u64> = ports.iter().map(|p| (*p, 0)).collect();
    let mut seen = HashSet::new();
    for s in socks {
        if tcp_state::was_established(i32::from(s.state))
            && let Some(n) = out.get_mut(&s.local.port())
            && seen.insert((s.local, s.remote))
        {
            *n += 1;
        }
    }
    out
}

/// A `sock_diag` dump of one family and protocol, filtered by state in the kernel.
fn diag(family: u8, protocol: u8, states: StateFlags) -> std::io::Result<Vec<Sock>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
    });
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        if parse_dump(&rx[..n], &mut out)? {
            return Ok(out);
        }
    }
}

/// Adds the sockets of one `recv` of a dump to `out`; true when the dump is done. A socket's
/// message is read as its fixed header only: the attributes after it (which the full parse
/// would copy into a list, one allocation for each unknown one) are skipped.
pub(crate) fn parse_dump(buf: &[u8], out: &mut Vec<Sock>) -> std::io::Result<bool> {
    let mut offset = 0;
    while offset < buf.len() {
        let msg = NetlinkBuffer::new_checked(&buf[offset..]).map_err(std::io::Error::other)?;
        let len = msg.length() as usize;
        if msg.message_type() == SOCK_DIAG_BY_FAMILY {
            let r = InetResponseHeader::parse(msg.payload()).map_err(std::io::Error::other)?;
            let id = &r.socket_id;
            out.push(Sock {
                local: SocketAddr::new(id.source_address, id.source_port),
                remote: SocketAddr::new(id.destination_address, id.destination_port),
                state: r.state,
            });
        } else {
            match NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
                .map_err(std::io::Error::other)?
                .payload
            {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    return Err(std::io::Error::other(format!("sock_diag: {e:?}")));
                }
                _ => {}
            }
        }
        if len == 0 {
            break;
        }
        offset += len.next_multiple_of(4);
    }
    Ok(false)
}

/// Both families of one protocol.
fn diag_both(protocol: u8, states: StateFlags) -> std::io::Result<Vec<Sock>> {
    let mut all = diag(AF_INET, protocol, states.clone())?;
    // A host without IPv6 has nothing to list there: that is not an error.
    all.extend(diag(AF_INET6, protocol, states).unwrap_or_default());
    Ok(all)
}

fn from_proc(tcp: bool) -> Result<Vec<Sock>, procfs::ProcError> {
    // TCP and UDP entries are different types with the same fields.
    macro_rules! socks {
        ($v4:expr, $v6:expr) => {{
            let v6 = $v6.unwrap_or_default();
            $v4?.iter()
                .chain(&v6)
                .map(|e| Sock {
                    local: e.local_address,
                    remote: e.remote_address,
                    state: e.state.clone() as u8,
                })
                .collect()
        }};
    }
    Ok(if tcp {
        socks!(procfs::net::tcp(), procfs::net::tcp6())
    } else {
        socks!(procfs::net::udp(), procfs::net::udp6())
    })
}

/// Why the socket table could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the socket table (netlink: {netlink}; /proc: {proc})")]
pub struct SocketsError {
    netlink: std::io::Error,
    proc: procfs::ProcError,
}

fn table(protocol: u8, states: StateFlags) -> Result<Vec<Sock>, SocketsError> {
    diag_both(protocol, states).or_else(|netlink| {
        tracing::debug!(error = %netlink, "sock_diag unavailable; reading /proc/net");
        from_proc(protocol == IPPROTO_TCP).map_err(|proc| SocketsError { netlink, proc })
    })
}

/// Counts the connections already open on each of `ports`.
pub fn seed_active(ports: &[u16]) -> Result<HashMap<u16, u64>, SocketsError> {
    let open = StateFlags::ESTABLISHED
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING;
    Ok(count_open(&table(IPPROTO_TCP, open)?, ports))
}

/// Local (port, protocol) pairs something listens on: TCP sockets in LISTEN, bound UDP sockets
/// that are not connected (a UDP socket's state is CLOSE until `connect` makes it ESTABLISHED:
/// a connected one takes datagrams from its one peer only, as a client's does, and the kernel
/// skips those in the dump instead of describing each).
pub fn listening() -> Result<HashSet<(u16, Proto)>, SocketsError> {
    let tcp = table(IPPROTO_TCP, StateFlags::LISTEN)?;
    let udp = table(IPPROTO_UDP, StateFlags::CLOSE)?;
    // The /proc fallback lists every state.
    let state = |s: &&Sock, wanted: i32| i32::from(s.state) == wanted;
    Ok(tcp
        .iter()
        .filter(|s| state(s, tcp_state::LISTEN))
        .map(|s| (s.local.port(), Proto::Tcp))
        .chain(
            udp.iter()
                .filter(|s| state(s, tcp_state::CLOSE))
                .map(|s| (s.local.port(), Proto::Udp)),
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use procfs::{ExplicitSystemInfo, FromBufReadSI, net::TcpNetEntries};

    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1770 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1770 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1770 0100007F:D432 08 00000000:00000000 00:00000000 00000000     0        0 102 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1770 0100007F:D433 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:D431 0100007F:1770 01 00000000:00000000 00:00000000 00000000     0        0 103 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:1B58 0100007F:D440 03 00000000:00000000 00:00000000 00000000     0        0 104 1 0000000000000000 20 4 30 10 -1
";

    fn socks() -> Vec<Sock> {
        let si = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        };
        let entries = TcpNetEntries::from_buf_read(TABLE.as_bytes(), &si)
            .unwrap()
            .0;
        entries
            .iter()
            .map(|e| Sock {
                local: e.local_address,
                remote: e.remote_address,
                state: e.state.clone() as u8,
            })
            .collect()
    }

    #[test]
    fn counts_open_states_by_local_port_only() {
        let mut all = socks();
        // The same connection listed twice (a concurrent change during the read) counts once.
        all.push(all[1]);
        let counts = count_open(&all, &[6000, 7000, 54321]);
        // 6000 (0x1770): ESTABLISHED + CLOSE_WAIT; LISTEN and TIME_WAIT do not count.
        assert_eq!(counts[&6000], 2);
        // 7000 (0x1B58): SYN_RECV is not open yet.
        assert_eq!(counts[&7000], 0);
        // The client side (local 0xD431) counts for its own port, not for 6000.
        assert_eq!(counts[&54321], 1);
    }

    /// A dump as the kernel sends it, made with the library's own emitters.
    fn dump_message(payload: SockDiagMessage) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = netlink_packet_core::NLM_F_MULTIPART;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn response(local: SocketAddr, state: u8) -> SockDiagMessage {
        use netlink_packet_sock_diag::inet::{InetResponse, nlas::Nla};
        let mut socket_id = if local.is_ipv4() {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        socket_id.source_port = local.port();
        socket_id.source_address = local.ip();
        SockDiagMessage::InetResponse(Box::new(InetResponse {
            header: InetResponseHeader {
                family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
                state,
                timer: None,
                socket_id,
                recv_queue: 0,
                send_queue: 128,
                uid: 0,
                inode: 7,
            },
            // Attributes after the header (the kernel adds several): skipped, not misread.
            nlas: [Nla::Shutdown(0), Nla::Congestion("cubic".into())]
                .into_iter()
                .collect(),
        }))
    }

    #[test]
    fn a_dump_is_read_header_by_header_to_its_end_or_its_error() {
        let v4: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let v6: SocketAddr = "[::1]:7001".parse().unwrap();
        let mut buf = dump_message(response(v4, 10));
        buf.extend(dump_message(response(v6, 7)));
        let mut out = Vec::new();
        assert!(!parse_dump(&buf, &mut out).unwrap(), "no end yet");
        let mut done = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::<SockDiagMessage>::Done(netlink_packet_core::DoneMessage::default()),
        );
        done.finalize();
        let mut end = vec![0; done.buffer_len()];
        done.serialize(&mut end);
        assert!(parse_dump(&end, &mut out).unwrap(), "the end");
        assert_eq!(
            out.iter().map(|s| (s.local, s.state)).collect::<Vec<_>>(),
            [(v4, 10), (v6, 7)]
        );
        let mut err = netlink_packet_core::ErrorMessage::default();
        err.code = std::num::NonZeroI32::new(-1);
        let mut e = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::<SockDiagMessage>::Error(err),
        );
        e.finalize();
        let mut ebuf = vec![0; e.buffer_len()];
        e.serialize(&mut ebuf);
        let message = parse_dump(&ebuf, &mut out).unwrap_err().to_string();
        assert!(message.starts_with("sock_diag: "), "{message}");
        // Cut short: an error, not a panic or a socket made up.
        let before = out.len();
        assert!(parse_dump(&buf[..buf.len() - 30], &mut out).is_err());
        assert_eq!(out.len(), before + 1, "the whole first message only");
    }

    #[test]
    fn netlink_sees_a_listener_and_its_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _s = l.accept().unwrap();
        assert!(listening().unwrap().contains(&(port, Proto::Tcp)));
        // UDP: a bound socket listens; a connected one (a client's) does not.
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(bound.local_addr().unwrap()).unwrap();
        let (b, c) = (
            bound.local_addr().unwrap().port(),
            client.local_addr().unwrap().port(),
        );
        let now = listening().unwrap();
        assert!(now.contains(&(b, Proto::Udp)), "bound");
        assert!(!now.contains(&(c, Proto::Udp)), "connected");
        assert_eq!(seed_active(&[port]).unwrap()[&port], 1);
        // The /proc fallback sees the same sockets.
        let proc = from_proc(true).unwrap();
        assert!(
            proc.iter()
                .any(|s| s.local.port() == port && i32::from(s.state) == tcp_state::LISTEN)
        );
        assert_eq!(count_open(&proc, &[port])[&port], 1);
        let direct = diag(AF_INET, IPPROTO_TCP, StateFlags::LISTEN).unwrap();
        assert!(
            direct.iter().any(|s| s.local.port() == port),
            "sock_diag did not list the listener"
        );
    }
}
