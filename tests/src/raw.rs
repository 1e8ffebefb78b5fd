//! Segments written by hand through a raw socket (std and libc only: `kernel_check` includes
//! this file too, inside a busybox initramfs).
use std::net::Ipv4Addr;

/// Sends one bare TCP ACK from `addr`:`from` to `addr`:`to` through a raw socket: a segment of
/// a connection neither end has (as after a server restarted). The kernel answers it with a
/// reset when nothing has `to`.
pub fn stray_ack(addr: Ipv4Addr, from: u16, to: u16) {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&from.to_be_bytes());
    tcp[2..4].copy_from_slice(&to.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes()); // seq
    tcp[8..12].copy_from_slice(&0x0bad_cafeu32.to_be_bytes()); // ack
    tcp[12] = 5 << 4; // data offset: 20 bytes
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes()); // window
    // Checksum over the pseudo-header (source, destination, protocol, length) and the segment.
    let ip = addr.octets();
    let pseudo = [ip, ip].concat();
    let mut sum: u32 = 6 + 20;
    for w in pseudo.chunks(2).chain(tcp.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    // SAFETY: a raw socket, a zeroed sockaddr_in we fill in, a buffer we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from(addr).to_be();
        let n = libc::sendto(
            fd,
            tcp.as_ptr().cast(),
            tcp.len(),
            0,
            (&raw const sa).cast(),
            size_of_val(&sa) as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, 20, "sendto: {err}");
    }
}
