//! The agent's own series: probes, snapshots, errors, configuration, and `process_*`.
use std::fmt;

use prometheus_client::{encoding::DescriptorEncoder, registry::Unit};

use super::{counter, counters, gauge, gauges};
use crate::{process::ProcessSample, snapshot::Snapshot};

pub(super) fn encode(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let seconds = Some(&Unit::Seconds);
    gauges(
        enc,
        "moonfrp_agent_probe_attached",
        "1 if the kernel probe is attached, 0 if it was skipped (the reason is in the log).",
        None,
        s.probes
            .iter()
            .map(|p| ([("probe", p.probe)], i64::from(p.attached))),
    )?;
    counter(
        enc,
        "moonfrp_agent_snapshots",
        "Snapshots taken since the agent started.",
        None,
        s.seq,
    )?;
    gauge(
        enc,
        "moonfrp_agent_snapshot_duration",
        "Time taken to build the latest snapshot.",
        seconds,
        s.build_duration.as_secs_f64(),
    )?;
    let taken = s
        .taken_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge(
        enc,
        "moonfrp_agent_last_snapshot_timestamp",
        "Unix time of the latest snapshot.",
        seconds,
        taken,
    )?;
    counters(
        enc,
        "moonfrp_agent_collection_errors",
        "Failed reads since start, by source.",
        None,
        s.agent
            .errors
            .iter()
            .map(|(source, n)| ([("source", *source)], *n)),
    )?;
    gauge(
        enc,
        "moonfrp_agent_config_last_reload_successful",
        "1 if the last configuration load was accepted.",
        None,
        i64::from(s.agent.config_ok),
    )?;
    gauge(
        enc,
        "moonfrp_agent_config_restart_required",
        "1 if the config file changes keys that only apply after a restart (listed in the log).",
        None,
        i64::from(s.agent.restart_pending),
    )?;
    counters(
        enc,
        "moonfrp_agent_limit_reached",
        "Times a limit on outside input was reached since start: names cut, proxies left out, answers, files or requests refused.",
        None,
        s.agent
            .limits
            .iter()
            .map(|(limit, n)| ([("limit", *limit)], *n)),
    )?;
    gauge(
        enc,
        "moonfrp_agent_tunnels_unwatched",
        "Tunnels without a kernel slot (all in use): not counted until one frees or kernel.slots grows.",
        None,
        i64::from(s.agent.unwatched),
    )?;
    gauge(
        enc,
        "moonfrp_agent_watch_slots_capacity",
        "Kernel counter slots (watched port/protocol pairs) available.",
        None,
        i64::from(s.agent.slots_capacity),
    )?;
    gauge(
        enc,
        "moonfrp_agent_watch_slots_used",
        "Kernel counter slots in use.",
        None,
        i64::from(s.agent.slots_used),
    )?;

    encode_collectors_and_bpf(s, enc)?;
    if let Some(p) = &s.process {
        encode_process(p, enc)?;
    }
    Ok(())
}

/// The standard `process_*` series, as Prometheus client libraries export them.
fn encode_process(p: &ProcessSample, enc: &mut DescriptorEncoder) -> fmt::Result {
    let seconds = Some(&Unit::Seconds);
    let bytes = Some(&Unit::Bytes);
    counter(
        enc,
        "process_cpu",
        "Total user and system CPU time spent by the agent.",
        seconds,
        p.cpu_seconds,
    )?;
    gauge(
        enc,
        "process_resident_memory",
        "Resident memory size of the agent.",
        bytes,
        p.resident_bytes as i64,
    )?;
    gauge(
        enc,
        "process_virtual_memory",
        "Virtual memory size of the agent.",
        bytes,
        p.virtual_bytes as i64,
    )?;
    gauge(
        enc,
        "process_open_fds",
        "Open file descriptors of the agent.",
        None,
        p.open_fds as i64,
    )?;
    if let Some(max) = p.max_fds {
        gauge(
            enc,
            "process_max_fds",
            "Maximum number of open file descriptors of the agent.",
            None,
            max as i64,
        )?;
    }
    gauge(
        enc,
        "process_start_time",
        "Start time of the agent since the Unix epoch.",
        seconds,
        p.start_time_seconds,
    )?;
    Ok(())
}

/// Per-collector timing and success, BPF program statistics, map capacities.
fn encode_collectors_and_bpf(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let seconds = Some(&Unit::Seconds);
    gauges(
        enc,
        "moonfrp_agent_collector_duration",
        "Time the collector took in the latest collection.",
        seconds,
        s.agent
            .collectors
            .iter()
            .map(|c| ([("collector", c.name)], c.duration.as_secs_f64())),
    )?;
    gauges(
        enc,
        "moonfrp_agent_collector_success",
        "1 if the collector worked in the latest collection, 0 if it failed (see collection_errors and the log).",
        None,
        s.agent
            .collectors
            .iter()
            .map(|c| ([("collector", c.name)], i64::from(c.ok))),
    )?;
    counters(
        enc,
        "moonfrp_agent_bpf_run_time",
        "Time the kernel spent running the probe's program (BPF run-time statistics).",
        seconds,
        s.agent
            .bpf
            .iter()
            .map(|b| ([("probe", b.probe)], b.run_time.as_secs_f64())),
    )?;
    counters(
        enc,
        "moonfrp_agent_bpf_runs",
        "Times the kernel ran the probe's program.",
        None,
        s.agent
            .bpf
            .iter()
            .map(|b| ([("probe", b.probe)], b.run_count)),
    )?;
    gauges(
        enc,
        "moonfrp_agent_bpf_map_max_entries",
        "Capacity of each kernel map.",
        None,
        s.agent
            .maps
            .iter()
            .map(|(m, n)| ([("map", *m)], i64::from(*n))),
    )?;
    Ok(())
}
