//! The agent's own series: probes, snapshots, errors, configuration, and `process_*`.

use crate::{
    process::ProcessSample,
    series::{Builder, Unit},
    snapshot::Snapshot,
};

pub(super) fn build(s: &Snapshot, b: &mut Builder) {
    let seconds = Some(Unit::Seconds);
    b.gauges(
        "moonfrp_agent_probe_attached",
        "1 if the kernel probe is attached, 0 if it was skipped (the reason is in the log).",
        None,
        s.probes
            .iter()
            .map(|p| ([("probe", p.probe)], i64::from(p.attached))),
    );
    b.counter(
        "moonfrp_agent_snapshots",
        "Snapshots taken since the agent started.",
        None,
        s.seq,
    );
    b.gauge(
        "moonfrp_agent_snapshot_duration",
        "Time taken to build the latest snapshot.",
        seconds,
        s.build_duration.as_secs_f64(),
    );
    let taken = s
        .taken_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    b.gauge(
        "moonfrp_agent_last_snapshot_timestamp",
        "Unix time of the latest snapshot.",
        seconds,
        taken,
    );
    b.counters(
        "moonfrp_agent_collection_errors",
        "Failed reads since start, by source.",
        None,
        s.agent
            .errors
            .iter()
            .map(|(source, n)| ([("source", *source)], *n)),
    );
    b.gauge(
        "moonfrp_agent_config_last_reload_successful",
        "1 if the last configuration load was accepted.",
        None,
        i64::from(s.agent.config_ok),
    );
    b.gauge(
        "moonfrp_agent_web_config_last_reload_successful",
        "1 if the last change of the web config file (TLS, basic auth) loaded; 0 while the previous one stays in force.",
        None,
        i64::from(s.agent.web_config_ok),
    );
    b.gauge(
        "moonfrp_agent_config_restart_required",
        "1 if the config file changes keys that only apply after a restart (listed in the log).",
        None,
        i64::from(s.agent.restart_pending),
    );
    b.counters("moonfrp_agent_limit_reached",
        "Times a limit on outside input was reached since start: names cut, proxies left out, answers, files or requests refused.",
        None,
        s.agent
            .limits
            .iter()
            .map(|(limit, n)| ([("limit", *limit)], *n)),
    );
    b.gauge("moonfrp_agent_tunnels_unwatched",
        "Tunnels without a kernel slot (all in use): not counted until one frees or kernel.slots grows.",
        None,
        i64::from(s.agent.unwatched),
    );
    b.gauge(
        "moonfrp_agent_watch_slots_capacity",
        "Kernel counter slots (watched port/protocol pairs) available.",
        None,
        i64::from(s.agent.slots_capacity),
    );
    b.gauge(
        "moonfrp_agent_watch_slots_used",
        "Kernel counter slots in use.",
        None,
        i64::from(s.agent.slots_used),
    );

    build_collectors_and_bpf(s, b);
    if let Some(p) = &s.process {
        build_process(p, b);
    }
}

/// The standard `process_*` series, as Prometheus client libraries export them.
fn build_process(p: &ProcessSample, b: &mut Builder) {
    let seconds = Some(Unit::Seconds);
    let bytes = Some(Unit::Bytes);
    b.counter(
        "process_cpu",
        "Total user and system CPU time spent by the agent.",
        seconds,
        p.cpu_seconds,
    );
    b.gauge(
        "process_resident_memory",
        "Resident memory size of the agent.",
        bytes,
        p.resident_bytes as i64,
    );
    b.gauge(
        "process_virtual_memory",
        "Virtual memory size of the agent.",
        bytes,
        p.virtual_bytes as i64,
    );
    b.gauge(
        "process_open_fds",
        "Open file descriptors of the agent.",
        None,
        p.open_fds as i64,
    );
    if let Some(max) = p.max_fds {
        b.gauge(
            "process_max_fds",
            "Maximum number of open file descriptors of the agent.",
            None,
            max as i64,
        );
    }
    b.gauge(
        "process_start_time",
        "Start time of the agent since the Unix epoch.",
        seconds,
        p.start_time_seconds,
    );
}

/// Per-collector timing and success, BPF program statistics, map capacities.
fn build_collectors_and_bpf(s: &Snapshot, b: &mut Builder) {
    let seconds = Some(Unit::Seconds);
    b.gauges(
        "moonfrp_agent_collector_duration",
        "Time the collector took in the latest collection.",
        seconds,
        s.agent
            .collectors
            .iter()
            .map(|c| ([("collector", c.name)], c.duration.as_secs_f64())),
    );
    b.gauges("moonfrp_agent_collector_success",
        "1 if the collector worked in the latest collection, 0 if it failed (see collection_errors and the log).",
        None,
        s.agent
            .collectors
            .iter()
            .map(|c| ([("collector", c.name)], i64::from(c.ok))),
    );
    b.counters(
        "moonfrp_agent_bpf_run_time",
        "Time the kernel spent running the probe's program while BPF statistics were on (see bpf_stats_window_seconds_total).",
        seconds,
        s.agent
            .bpf
            .iter()
            .map(|b| ([("probe", b.probe)], b.run_time.as_secs_f64())),
    );
    b.counters(
        "moonfrp_agent_bpf_runs",
        "Times the kernel ran the probe's program while BPF statistics were on (see bpf_stats_window_seconds_total).",
        None,
        s.agent
            .bpf
            .iter()
            .map(|b| ([("probe", b.probe)], b.run_count)),
    );
    b.counters(
        "moonfrp_agent_bpf_stats_window",
        "Time the kernel's BPF run-time statistics were on (the sampling windows, or since start with bpf_stats = always): bpf_runs and bpf_run_time grow only then.",
        seconds,
        s.agent
            .bpf_stats_on
            .iter()
            .map(|d| ([] as [(&str, &str); 0], d.as_secs_f64())),
    );
    b.gauges(
        "moonfrp_agent_bpf_map_max_entries",
        "Capacity of each kernel map.",
        None,
        s.agent
            .maps
            .iter()
            .map(|(m, n)| ([("map", *m)], i64::from(*n))),
    );
}
