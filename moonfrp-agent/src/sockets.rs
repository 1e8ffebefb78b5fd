//! Connections already open on watched ports when they start being watched, from the socket
//! table (/proc/net/tcp and tcp6), so `connections_active` is right from the first scrape.
use std::collections::HashMap;

use procfs::net::{TcpNetEntry, TcpState};

/// States of a connection whose later close the kernel programs will count.
fn is_open(state: &TcpState) -> bool {
    matches!(
        state,
        TcpState::Established
            | TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::CloseWait
            | TcpState::LastAck
            | TcpState::Closing
    )
}

/// Open connections per local port among `ports`. Each connection counts once: reading
/// /proc/net/tcp while other sockets come and go can list one twice (the kernel resumes its walk
/// by position), so entries are told apart by their address pair.
pub fn count_open<'a>(
    entries: impl IntoIterator<Item = &'a TcpNetEntry>,
    ports: &[u16],
) -> HashMap<u16, u64> {
    let mut out: HashMap<u16, u64> = ports.iter().map(|p| (*p, 0)).collect();
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if is_open(&e.state)
            && let Some(n) = out.get_mut(&e.local_address.port())
            && seen.insert((e.local_address, e.remote_address))
        {
            *n += 1;
        }
    }
    out
}

/// Reads the socket tables of this network namespace and counts open connections per port.
pub fn seed_active(ports: &[u16]) -> Result<HashMap<u16, u64>, procfs::ProcError> {
    let mut entries = procfs::net::tcp()?;
    // A host without IPv6 has no tcp6 table: that is not an error.
    if let Ok(v6) = procfs::net::tcp6() {
        entries.extend(v6);
    }
    Ok(count_open(&entries, ports))
}

/// Local (port, protocol) pairs something listens on: TCP sockets in LISTEN, bound UDP sockets.
pub fn listening()
-> Result<std::collections::HashSet<(u16, moonfrp_common::Proto)>, procfs::ProcError> {
    use moonfrp_common::Proto;
    let mut out = std::collections::HashSet::new();
    let mut tcp = procfs::net::tcp()?;
    tcp.extend(procfs::net::tcp6().unwrap_or_default());
    out.extend(
        tcp.iter()
            .filter(|e| e.state == TcpState::Listen)
            .map(|e| (e.local_address.port(), Proto::Tcp)),
    );
    let mut udp = procfs::net::udp()?;
    udp.extend(procfs::net::udp6().unwrap_or_default());
    out.extend(udp.iter().map(|e| (e.local_address.port(), Proto::Udp)));
    Ok(out)
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

    #[test]
    fn counts_open_states_by_local_port_only() {
        let si = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        };
        let entries = TcpNetEntries::from_buf_read(TABLE.as_bytes(), &si)
            .unwrap()
            .0;
        // The same connection listed twice (a concurrent change during the read) counts once.
        let twice: Vec<&TcpNetEntry> = entries
            .iter()
            .chain(entries.iter().skip(1).take(1))
            .collect();
        let counts = count_open(twice, &[6000, 7000, 54321]);
        // 6000 (0x1770): ESTABLISHED + CLOSE_WAIT; LISTEN and TIME_WAIT do not count.
        assert_eq!(counts[&6000], 2);
        // 7000 (0x1B58): SYN_RECV is not open yet.
        assert_eq!(counts[&7000], 0);
        // The client side (local 0xD431) counts for its own port, not for 6000.
        assert_eq!(counts[&54321], 1);
    }
}
