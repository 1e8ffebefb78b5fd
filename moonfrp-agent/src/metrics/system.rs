//! Host, FRP-process and service series (`moonfrp_system_*`, `moonfrp_process_*`,
//! `moonfrp_service_*`). A source that failed this interval has no series at all.

use crate::{
    collect::{
        SystemSample,
        cgroups::{CgroupSample, Group, stats::Stats},
        cpu::CpuSample,
        disk::Disk,
        filesystem::Filesystem,
        host::HostSample,
        memory::MemorySample,
        netdev::NetDev,
        netstat::HostTcp,
        processes::{FrpProcess, ProcStats},
        systemd::{STATES, Services},
    },
    series::{Builder, Text, Unit, Value},
};

const SECONDS: Option<Unit> = Some(Unit::Seconds);
const BYTES: Option<Unit> = Some(Unit::Bytes);

type NetField = (&'static str, Option<Unit>, fn(&NetDev) -> u64, &'static str);
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

type DiskField = (&'static str, Option<Unit>, fn(&Disk) -> f64, &'static str);
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

pub(super) fn build(s: &SystemSample, b: &mut Builder) {
    if let Some(c) = &s.cpu {
        build_cpu(c, b);
    }
    if let Some(m) = &s.memory {
        build_memory(m, b);
    }
    if let Some(h) = &s.host {
        build_host(h, b);
    }
    if let Some(devs) = &s.netdev {
        for (name, unit, f, help) in &NET {
            b.counters(
                name,
                help,
                *unit,
                devs.iter().map(|d| ([("device", Text::of(&d.name))], f(d))),
            );
        }
    }
    if let Some(disks) = &s.disks {
        for (name, unit, f, help) in &DISK {
            b.counters(
                name,
                help,
                *unit,
                disks
                    .iter()
                    .map(|d| ([("device", Text::of(&d.name))], f(d))),
            );
        }
    }
    if let Some(fss) = &s.filesystems {
        build_filesystems(fss, b);
    }
    if let Some(t) = &s.tcp {
        build_tcp(t, b);
    }
    if let Some(p) = &s.processes {
        build_processes(p, b);
    }
    if let Some(sv) = &s.services {
        build_services(sv, b);
    }
    if let Some(cg) = &s.cgroups {
        build_cgroups(cg, b);
    }
}

fn build_cpu(c: &CpuSample, b: &mut Builder) {
    b.counters(
        "moonfrp_system_cpu",
        "CPU time of all CPUs by mode.",
        SECONDS,
        c.seconds.iter().map(|(m, v)| ([("mode", *m)], *v)),
    );
    b.gauge(
        "moonfrp_system_cpus",
        "CPUs in the host.",
        None,
        c.cpus as i64,
    );
    if let Some(r) = c.usage_ratio {
        b.gauge(
            "moonfrp_system_cpu_usage_ratio",
            "Busy share of all CPUs over the last interval (0..1).",
            None,
            r,
        );
    }
    b.gauge(
        "moonfrp_system_boot_time",
        "Boot time, Unix seconds.",
        SECONDS,
        c.boot_time as i64,
    );
}

fn build_memory(m: &MemorySample, b: &mut Builder) {
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
        b.gauge(name, help, BYTES, v as i64);
    }
}

fn build_host(h: &HostSample, b: &mut Builder) {
    b.gauge(
        "moonfrp_system_load1",
        "Load average over 1 minute.",
        None,
        h.load1,
    );
    b.gauge(
        "moonfrp_system_load5",
        "Load average over 5 minutes.",
        None,
        h.load5,
    );
    b.gauge(
        "moonfrp_system_load15",
        "Load average over 15 minutes.",
        None,
        h.load15,
    );
    b.gauge(
        "moonfrp_system_uptime",
        "Time since boot.",
        SECONDS,
        h.uptime_seconds,
    );
    b.gauge(
        "moonfrp_system_open_fds",
        "File handles allocated on the host.",
        None,
        h.open_fds as i64,
    );
    b.gauge(
        "moonfrp_system_max_fds",
        "Maximum file handles of the host.",
        None,
        h.max_fds as i64,
    );
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

fn build_filesystems(fss: &[Filesystem], b: &mut Builder) {
    let labels = |f: &Filesystem| {
        let m = &f.mount;
        [
            ("device", m.device.clone()),
            ("fstype", m.fstype.clone()),
            ("mountpoint", m.mountpoint.clone()),
        ]
    };
    for (name, f, help) in FS {
        b.gauges(
            name,
            help,
            BYTES,
            fss.iter().map(|fs| (labels(fs), f(fs) as i64)),
        );
    }
}

fn build_tcp(t: &HostTcp, b: &mut Builder) {
    b.gauge(
        "moonfrp_system_tcp_established",
        "TCP connections ESTABLISHED or CLOSE_WAIT now.",
        None,
        t.curr_estab as i64,
    );
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
        b.counter(name, help, None, v);
    }
}

fn build_processes(procs: &[FrpProcess], b: &mut Builder) {
    let l = |p: &FrpProcess| [("process", p.process.clone()), ("config", p.config.clone())];
    b.gauges(
        "moonfrp_process_up",
        "Processes running with this name and config (0: seen before, gone now).",
        None,
        procs.iter().map(|p| (l(p), p.running as i64)),
    );
    b.counters(
        "moonfrp_process_restarts",
        "New processes seen for this name and config after the first.",
        None,
        procs.iter().map(|p| (l(p), p.restarts)),
    );
    let running: Vec<(&FrpProcess, &ProcStats)> = procs
        .iter()
        .filter_map(|p| p.stats.as_ref().map(|s| (p, s)))
        .collect();
    b.counters(
        "moonfrp_process_cpu",
        "CPU time of the processes.",
        SECONDS,
        running.iter().map(|(p, s)| (l(p), s.cpu_seconds)),
    );
    b.gauges(
        "moonfrp_process_resident_memory",
        "Resident memory of the processes.",
        BYTES,
        running.iter().map(|(p, s)| (l(p), s.resident_bytes as i64)),
    );
    b.gauges(
        "moonfrp_process_threads",
        "Threads of the processes.",
        None,
        running.iter().map(|(p, s)| (l(p), s.threads as i64)),
    );
    b.gauges(
        "moonfrp_process_open_fds",
        "Open file descriptors of the processes.",
        None,
        running.iter().map(|(p, s)| (l(p), s.open_fds as i64)),
    );
    b.gauges(
        "moonfrp_process_start_time",
        "Start time of the oldest process, Unix seconds.",
        SECONDS,
        running.iter().map(|(p, s)| (l(p), s.start_time_seconds)),
    );
}

fn build_services(sv: &Services, b: &mut Builder) {
    let rows = sv.units.iter().flat_map(|u| {
        STATES.map(|st| {
            (
                [("unit", Text::of(&u.name)), ("state", Text::Static(st))],
                i64::from(u.active_state == st),
            )
        })
    });
    b.gauges(
        "moonfrp_service_state",
        "1 for the unit's current state (systemd ActiveState).",
        None,
        rows,
    );
    b.counters(
        "moonfrp_service_restarts",
        "Automatic restarts of the unit (systemd NRestarts).",
        None,
        sv.units
            .iter()
            .map(|u| ([("unit", Text::of(&u.name))], u.restarts)),
    );
    b.gauge(
        "moonfrp_services",
        "Units matching the configured patterns.",
        None,
        sv.units.len() as i64,
    );
    b.gauge(
        "moonfrp_services_active",
        "Matching units that are active.",
        None,
        sv.count("active") as i64,
    );
    b.gauge(
        "moonfrp_services_failed",
        "Matching units that have failed.",
        None,
        sv.count("failed") as i64,
    );
}

/// A per-cgroup counter or gauge: name after the prefix, unit, value, help.
type CgroupFamily = (
    &'static str,
    Option<Unit>,
    fn(&Stats) -> Option<Value>,
    &'static str,
);

const CGROUP_COUNTERS: [CgroupFamily; 4] = [
    (
        "memory_pressure_waiting",
        SECONDS,
        |s| s.memory_waiting_seconds.map(Value::from),
        "Time some of its tasks waited for memory (PSI some).",
    ),
    (
        "memory_pressure_stalled",
        SECONDS,
        |s| s.memory_stalled_seconds.map(Value::from),
        "Time all of its tasks waited for memory at once (PSI full).",
    ),
    (
        "io_read",
        BYTES,
        |s| s.io_read_bytes.map(Value::from),
        "Bytes read from block devices.",
    ),
    (
        "io_written",
        BYTES,
        |s| s.io_write_bytes.map(Value::from),
        "Bytes written to block devices.",
    ),
];

const CGROUP_GAUGES: [CgroupFamily; 3] = [
    (
        "memory",
        BYTES,
        |s| s.memory_bytes.map(Value::from),
        "Memory charged to it now (cgroup memory.current, or v1 usage_in_bytes).",
    ),
    (
        "memory_peak",
        BYTES,
        |s| s.memory_peak_bytes.map(Value::from),
        "Most memory charged to it since it started (memory.peak, or v1 max_usage_in_bytes).",
    ),
    (
        "pids",
        None,
        |s| s.pids.map(Value::from),
        "Processes and threads in it.",
    ),
];

/// One family of every group (`moonfrp_service_*{unit}`, `moonfrp_container_*{container,id}`).
fn build_groups(b: &mut Builder, prefix: &str, groups: &[(Vec<(&'static str, Text)>, &Stats)]) {
    b.counters(
        &format!("{prefix}_cpu"),
        "CPU time by mode.",
        SECONDS,
        groups.iter().flat_map(|(l, s)| {
            [
                ("user", s.cpu_user_seconds),
                ("system", s.cpu_system_seconds),
            ]
            .into_iter()
            .filter_map(|(mode, v)| {
                let mut l = l.clone();
                l.push(("mode", Text::Static(mode)));
                Some((l, v?))
            })
        }),
    );
    for (name, unit, f, help) in &CGROUP_COUNTERS {
        b.counters(
            &format!("{prefix}_{name}"),
            help,
            *unit,
            groups.iter().filter_map(|(l, s)| Some((l.clone(), f(s)?))),
        );
    }
    b.counters(
        &format!("{prefix}_oom_kills"),
        "Processes in it killed for want of memory.",
        None,
        groups
            .iter()
            .filter_map(|(l, s)| Some((l.clone(), s.oom_kills?))),
    );
    for (name, unit, f, help) in &CGROUP_GAUGES {
        b.gauges(
            &format!("{prefix}_{name}"),
            help,
            *unit,
            groups.iter().filter_map(|(l, s)| Some((l.clone(), f(s)?))),
        );
    }
}

fn build_cgroups(cg: &CgroupSample, b: &mut Builder) {
    let units: Vec<(Vec<(&'static str, Text)>, &Stats)> = cg
        .units
        .iter()
        .map(|u: &Group| (vec![("unit", Text::of(&u.name))], &u.stats))
        .collect();
    build_groups(b, "moonfrp_service", &units);
    let containers: Vec<(Vec<(&'static str, Text)>, &Stats)> = cg
        .containers
        .iter()
        .map(|c| {
            (
                vec![("container", Text::of(&c.name)), ("id", Text::of(&c.id))],
                &c.stats,
            )
        })
        .collect();
    build_groups(b, "moonfrp_container", &containers);
    b.gauge(
        "moonfrp_containers",
        "Containers found in the cgroup tree.",
        None,
        cg.containers_found as i64,
    );
    b.gauge(
        "moonfrp_containers_exported",
        "Containers whose resources are exported (at most collectors.max_containers).",
        None,
        cg.containers.len() as i64,
    );
}
