//! Host, FRP-process and service series (`moonfrp_system_*`, `moonfrp_process_*`,
//! `moonfrp_service_*`). A source that failed this interval has no series at all.
use std::fmt;

use prometheus_client::{encoding::DescriptorEncoder, registry::Unit};

use super::{counter, counters, gauge, gauges};
use crate::collect::{
    SystemSample,
    cpu::CpuSample,
    disk::Disk,
    filesystem::Filesystem,
    host::HostSample,
    memory::MemorySample,
    netdev::NetDev,
    netstat::HostTcp,
    processes::{FrpProcess, ProcStats},
    systemd::{STATES, Services},
};

const SECONDS: Option<&Unit> = Some(&Unit::Seconds);
const BYTES: Option<&Unit> = Some(&Unit::Bytes);

type NetField = (
    &'static str,
    Option<&'static Unit>,
    fn(&NetDev) -> u64,
    &'static str,
);
const NET: [NetField; 8] = [
    (
        "moonfrp_system_network_receive",
        BYTES,
        |d| d.rx_bytes,
        "Bytes received by the interface.",
    ),
    (
        "moonfrp_system_network_transmit",
        BYTES,
        |d| d.tx_bytes,
        "Bytes sent by the interface.",
    ),
    (
        "moonfrp_system_network_receive_packets",
        None,
        |d| d.rx_packets,
        "Packets received by the interface.",
    ),
    (
        "moonfrp_system_network_transmit_packets",
        None,
        |d| d.tx_packets,
        "Packets sent by the interface.",
    ),
    (
        "moonfrp_system_network_receive_errors",
        None,
        |d| d.rx_errors,
        "Receive errors of the interface.",
    ),
    (
        "moonfrp_system_network_transmit_errors",
        None,
        |d| d.tx_errors,
        "Transmit errors of the interface.",
    ),
    (
        "moonfrp_system_network_receive_drops",
        None,
        |d| d.rx_drops,
        "Received packets dropped by the interface.",
    ),
    (
        "moonfrp_system_network_transmit_drops",
        None,
        |d| d.tx_drops,
        "Outgoing packets dropped by the interface.",
    ),
];

type DiskField = (
    &'static str,
    Option<&'static Unit>,
    fn(&Disk) -> f64,
    &'static str,
);
const DISK: [DiskField; 7] = [
    (
        "moonfrp_system_disk_reads_completed",
        None,
        |d| d.reads as f64,
        "Reads completed by the block device.",
    ),
    (
        "moonfrp_system_disk_writes_completed",
        None,
        |d| d.writes as f64,
        "Writes completed by the block device.",
    ),
    (
        "moonfrp_system_disk_read",
        BYTES,
        |d| d.read_bytes as f64,
        "Bytes read from the block device.",
    ),
    (
        "moonfrp_system_disk_written",
        BYTES,
        |d| d.written_bytes as f64,
        "Bytes written to the block device.",
    ),
    (
        "moonfrp_system_disk_read_time",
        SECONDS,
        |d| d.read_seconds,
        "Time spent reading.",
    ),
    (
        "moonfrp_system_disk_write_time",
        SECONDS,
        |d| d.write_seconds,
        "Time spent writing.",
    ),
    (
        "moonfrp_system_disk_io_time",
        SECONDS,
        |d| d.io_seconds,
        "Time the device had I/O in progress.",
    ),
];

pub(super) fn encode(s: &SystemSample, enc: &mut DescriptorEncoder) -> fmt::Result {
    if let Some(c) = &s.cpu {
        encode_cpu(c, enc)?;
    }
    if let Some(m) = &s.memory {
        encode_memory(m, enc)?;
    }
    if let Some(h) = &s.host {
        encode_host(h, enc)?;
    }
    if let Some(devs) = &s.netdev {
        for (name, unit, f, help) in &NET {
            counters(
                enc,
                name,
                help,
                *unit,
                devs.iter().map(|d| ([("device", d.name.as_str())], f(d))),
            )?;
        }
    }
    if let Some(disks) = &s.disks {
        for (name, unit, f, help) in &DISK {
            counters(
                enc,
                name,
                help,
                *unit,
                disks.iter().map(|d| ([("device", d.name.as_str())], f(d))),
            )?;
        }
    }
    if let Some(fss) = &s.filesystems {
        encode_filesystems(fss, enc)?;
    }
    if let Some(t) = &s.tcp {
        encode_tcp(t, enc)?;
    }
    if let Some(p) = &s.processes {
        encode_processes(p, enc)?;
    }
    if let Some(sv) = &s.services {
        encode_services(sv, enc)?;
    }
    Ok(())
}

fn encode_cpu(c: &CpuSample, enc: &mut DescriptorEncoder) -> fmt::Result {
    counters(
        enc,
        "moonfrp_system_cpu",
        "CPU time of all CPUs by mode.",
        SECONDS,
        c.seconds.iter().map(|(m, v)| ([("mode", *m)], *v)),
    )?;
    gauge(
        enc,
        "moonfrp_system_cpus",
        "CPUs in the host.",
        None,
        c.cpus as i64,
    )?;
    if let Some(r) = c.usage_ratio {
        gauge(
            enc,
            "moonfrp_system_cpu_usage_ratio",
            "Busy share of all CPUs over the last interval (0..1).",
            None,
            r,
        )?;
    }
    gauge(
        enc,
        "moonfrp_system_boot_time",
        "Boot time, Unix seconds.",
        SECONDS,
        c.boot_time as i64,
    )
}

fn encode_memory(m: &MemorySample, enc: &mut DescriptorEncoder) -> fmt::Result {
    for (name, v, help) in [
        ("moonfrp_system_memory_total", m.total, "Usable RAM."),
        (
            "moonfrp_system_memory_available",
            m.available,
            "RAM available to start new applications without swapping.",
        ),
        ("moonfrp_system_memory_free", m.free, "RAM unused."),
        (
            "moonfrp_system_memory_used",
            m.used,
            "RAM in use: total minus available.",
        ),
        (
            "moonfrp_system_memory_buffers",
            m.buffers,
            "RAM in block-device buffers.",
        ),
        (
            "moonfrp_system_memory_cached",
            m.cached,
            "RAM in the page cache and reclaimable slab.",
        ),
        ("moonfrp_system_swap_total", m.swap_total, "Swap space."),
        (
            "moonfrp_system_swap_free",
            m.swap_free,
            "Unused swap space.",
        ),
    ] {
        gauge(enc, name, help, BYTES, v as i64)?;
    }
    Ok(())
}

fn encode_host(h: &HostSample, enc: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        enc,
        "moonfrp_system_load1",
        "Load average over 1 minute.",
        None,
        h.load1,
    )?;
    gauge(
        enc,
        "moonfrp_system_load5",
        "Load average over 5 minutes.",
        None,
        h.load5,
    )?;
    gauge(
        enc,
        "moonfrp_system_load15",
        "Load average over 15 minutes.",
        None,
        h.load15,
    )?;
    gauge(
        enc,
        "moonfrp_system_uptime",
        "Time since boot.",
        SECONDS,
        h.uptime_seconds,
    )?;
    gauge(
        enc,
        "moonfrp_system_open_fds",
        "File handles allocated on the host.",
        None,
        h.open_fds as i64,
    )?;
    gauge(
        enc,
        "moonfrp_system_max_fds",
        "Maximum file handles of the host.",
        None,
        h.max_fds as i64,
    )
}

type FsField = (&'static str, fn(&Filesystem) -> u64, &'static str);
const FS: [FsField; 3] = [
    (
        "moonfrp_system_filesystem_size",
        |f| f.size_bytes,
        "Filesystem size.",
    ),
    (
        "moonfrp_system_filesystem_avail",
        |f| f.avail_bytes,
        "Filesystem space available to unprivileged users.",
    ),
    (
        "moonfrp_system_filesystem_used",
        |f| f.used_bytes,
        "Filesystem space used.",
    ),
];

fn encode_filesystems(fss: &[Filesystem], enc: &mut DescriptorEncoder) -> fmt::Result {
    let labels = |f: &Filesystem| {
        let m = &f.mount;
        [
            ("device", m.device.clone()),
            ("fstype", m.fstype.clone()),
            ("mountpoint", m.mountpoint.clone()),
        ]
    };
    for (name, f, help) in FS {
        gauges(
            enc,
            name,
            help,
            BYTES,
            fss.iter().map(|fs| (labels(fs), f(fs) as i64)),
        )?;
    }
    Ok(())
}

fn encode_tcp(t: &HostTcp, enc: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        enc,
        "moonfrp_system_tcp_established",
        "TCP connections ESTABLISHED or CLOSE_WAIT now.",
        None,
        t.curr_estab as i64,
    )?;
    for (name, v, help) in [
        (
            "moonfrp_system_tcp_retransmitted_segments",
            t.retrans_segs,
            "TCP segments retransmitted by the host.",
        ),
        (
            "moonfrp_system_tcp_resets_sent",
            t.out_rsts,
            "TCP segments with RST sent by the host.",
        ),
        (
            "moonfrp_system_tcp_listen_overflows",
            t.listen_overflows,
            "Times a listen queue overflowed.",
        ),
        (
            "moonfrp_system_tcp_listen_drops",
            t.listen_drops,
            "SYNs to listening sockets dropped.",
        ),
        (
            "moonfrp_system_tcp_active_opens",
            t.active_opens,
            "TCP connections opened by the host.",
        ),
        (
            "moonfrp_system_tcp_passive_opens",
            t.passive_opens,
            "TCP connections accepted by the host.",
        ),
    ] {
        counter(enc, name, help, None, v)?;
    }
    Ok(())
}

fn encode_processes(procs: &[FrpProcess], enc: &mut DescriptorEncoder) -> fmt::Result {
    let l = |p: &FrpProcess| [("process", p.process.clone()), ("config", p.config.clone())];
    gauges(
        enc,
        "moonfrp_process_up",
        "Processes running with this name and config (0: seen before, gone now).",
        None,
        procs.iter().map(|p| (l(p), p.running as i64)),
    )?;
    counters(
        enc,
        "moonfrp_process_restarts",
        "New processes seen for this name and config after the first.",
        None,
        procs.iter().map(|p| (l(p), p.restarts)),
    )?;
    let running: Vec<(&FrpProcess, &ProcStats)> = procs
        .iter()
        .filter_map(|p| p.stats.as_ref().map(|s| (p, s)))
        .collect();
    counters(
        enc,
        "moonfrp_process_cpu",
        "CPU time of the processes.",
        SECONDS,
        running.iter().map(|(p, s)| (l(p), s.cpu_seconds)),
    )?;
    gauges(
        enc,
        "moonfrp_process_resident_memory",
        "Resident memory of the processes.",
        BYTES,
        running.iter().map(|(p, s)| (l(p), s.resident_bytes as i64)),
    )?;
    gauges(
        enc,
        "moonfrp_process_threads",
        "Threads of the processes.",
        None,
        running.iter().map(|(p, s)| (l(p), s.threads as i64)),
    )?;
    gauges(
        enc,
        "moonfrp_process_open_fds",
        "Open file descriptors of the processes.",
        None,
        running.iter().map(|(p, s)| (l(p), s.open_fds as i64)),
    )?;
    gauges(
        enc,
        "moonfrp_process_start_time",
        "Start time of the oldest process, Unix seconds.",
        SECONDS,
        running.iter().map(|(p, s)| (l(p), s.start_time_seconds)),
    )
}

fn encode_services(sv: &Services, enc: &mut DescriptorEncoder) -> fmt::Result {
    let rows = sv.units.iter().flat_map(|u| {
        STATES.map(|st| {
            (
                [("unit", u.name.as_str()), ("state", st)],
                i64::from(u.active_state == st),
            )
        })
    });
    gauges(
        enc,
        "moonfrp_service_state",
        "1 for the unit's current state (systemd ActiveState).",
        None,
        rows,
    )?;
    counters(
        enc,
        "moonfrp_service_restarts",
        "Automatic restarts of the unit (systemd NRestarts).",
        None,
        sv.units
            .iter()
            .map(|u| ([("unit", u.name.as_str())], u.restarts)),
    )?;
    gauge(
        enc,
        "moonfrp_services",
        "Units matching the configured patterns.",
        None,
        sv.units.len() as i64,
    )?;
    gauge(
        enc,
        "moonfrp_services_active",
        "Matching units that are active.",
        None,
        sv.count("active") as i64,
    )?;
    gauge(
        enc,
        "moonfrp_services_failed",
        "Matching units that have failed.",
        None,
        sv.count("failed") as i64,
    )
}
