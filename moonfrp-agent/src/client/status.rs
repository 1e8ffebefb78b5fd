//! `moonfrp-agent status`: the latest snapshot as plain text, grouped by category (or `--json`).
use std::fmt::Write as _;

use clap::Args;

use super::{ClientArgs, FetchError, bytes, fetch_status, fit, ibytes, plain};
use crate::{
    api::{alerts::AlertLog, status::Status},
    time::rfc3339,
};

#[derive(Clone, Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The agent's status JSON, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Alerts only: the active ones and the alert log (firing, resolved, …) from history.
    #[arg(long)]
    pub alerts: bool,
    /// With --alerts: how far back the log goes.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "24h",
        requires = "alerts"
    )]
    pub since: String,
    /// With --alerts: most log events shown (the newest).
    #[arg(long, value_name = "N", default_value_t = 50, requires = "alerts")]
    pub limit: usize,
}

/// Runs the command: (exit code, text for stdout, text for stderr).
pub fn run(args: &StatusArgs) -> (u8, String, String) {
    let (ep, rt) = match super::start(&args.client) {
        Ok(v) => v,
        Err(exit) => return exit,
    };
    if args.alerts {
        return alerts(&rt, &ep, args);
    }
    match fetch_status(&rt, &ep) {
        Ok(s) if args.json => (
            0,
            serde_json::to_string_pretty(&s).expect("status serializes") + "\n",
            String::new(),
        ),
        Ok(s) => (0, render(&s), String::new()),
        Err(e @ FetchError::NoSnapshot) => (3, String::new(), e.to_string()),
        Err(e) => (1, String::new(), e.to_string()),
    }
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{}/s", bytes(v)))
}

fn count(v: Option<f64>) -> String {
    #[allow(clippy::cast_possible_truncation)]
    v.map_or_else(|| "-".into(), |v| format!("{}", v.round() as i64))
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    #[allow(clippy::cast_precision_loss)]
    let p = part as f64 * 100.0 / whole as f64;
    format!("{p:.0} %")
}

/// The text of `status`: plain lines, no escape codes.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "moonfrp-agent {} · snapshot {} · interval {:.0} s",
        fit(&s.version, 40),
        rfc3339(s.time),
        s.interval_seconds
    );
    let _ = writeln!(o, "\nTUNNELS ({})", s.tunnels.len());
    if s.tunnels.is_empty() {
        o.push_str("  none watched (add [[tunnels]] or frp configs; see README)\n");
    } else {
        let _ = writeln!(
            o,
            "  {:<24} {:<11} {:<5} {:>12} {:>12} {:>6} {:>8} {:>8}  LAST ERROR",
            "NAME", "PORT", "STATE", "IN", "OUT", "CONNS", "REFUSED", "ERRORS"
        );
        for t in &s.tunnels {
            let port = t
                .port
                .map_or_else(|| format!("-/{}", t.kind), |p| format!("{p}/{}", t.proto));
            let _ = writeln!(
                o,
                "  {:<24} {:<11} {:<5} {:>12} {:>12} {:>6} {:>8} {:>8}  {}",
                fit(&t.tunnel, 24),
                fit(&port, 11),
                if t.up { "up" } else { "DOWN" },
                rate(t.receive_bytes_per_second),
                rate(t.transmit_bytes_per_second),
                t.connections_active
                    .map_or_else(|| "-".into(), |c| c.to_string()),
                count(t.refused_last_hour),
                count(t.errors_last_hour),
                plain(
                    t.reason
                        .as_deref()
                        .or(t.last_error.as_ref().map(|e| e.reason.as_str()))
                        .unwrap_or("-")
                ),
            );
        }
        o.push_str("  (REFUSED and ERRORS: over the last hour, from history; ERRORS = resets + retransmits)\n");
    }
    o.push_str("\nFRP PROCESSES\n");
    if s.processes.is_empty() {
        o.push_str("  none seen\n");
    }
    for p in &s.processes {
        let _ = writeln!(
            o,
            "  {:<8} {:<32} {:<12} restarts {:<4} cpu {:<10} memory {}",
            fit(&p.process, 8),
            fit(&p.config, 32),
            if p.running > 0 {
                format!("running ({})", p.running)
            } else {
                "GONE".into()
            },
            p.restarts,
            p.cpu_seconds
                .map_or_else(|| "-".into(), |c| format!("{c:.1} s")),
            p.resident_bytes.map_or_else(|| "-".into(), ibytes),
        );
    }
    render_services(s, &mut o);
    render_system(s, &mut o);
    render_active(s, &mut o);
    o
}

/// CPU over the last interval as a share of one core (`150.0 %`: one and a half), or `-`.
fn cores(r: &crate::api::status::Resources) -> String {
    r.cpu_cores
        .map_or_else(|| "-".into(), |c| format!("{:.1} %", c * 100.0))
}

fn resources(r: &crate::api::status::Resources) -> String {
    format!(
        "cpu {:>7} memory {:>10} pids {:>5} oom {}",
        cores(r),
        r.memory_bytes.map_or_else(|| "-".into(), ibytes),
        r.pids.map_or_else(|| "-".into(), |p| p.to_string()),
        r.oom_kills.map_or_else(|| "-".into(), |k| k.to_string()),
    )
}

fn render_services(s: &Status, o: &mut String) {
    o.push_str("\nSERVICES\n");
    if s.services.is_empty() {
        o.push_str("  none (no unit matches collectors.units)\n");
    }
    for u in &s.services {
        let _ = writeln!(
            o,
            "  {:<40} {:<12} restarts {:<4} {}",
            fit(&u.unit, 40),
            fit(if u.state.is_empty() { "-" } else { &u.state }, 12),
            u.restarts,
            resources(&u.resources)
        );
    }
    if !s.containers.is_empty() {
        let _ = writeln!(o, "\nCONTAINERS ({})", s.containers.len());
        for c in &s.containers {
            let _ = writeln!(
                o,
                "  {:<40} {:<12} {}",
                fit(&c.container, 40),
                fit(&c.id, 12),
                resources(&c.resources)
            );
        }
    }
}

fn render_active(s: &Status, o: &mut String) {
    let _ = writeln!(o, "\nALERTS ({})", s.alerts.len());
    if s.alerts.is_empty() {
        o.push_str("  none active\n");
    }
    for a in &s.alerts {
        let _ = writeln!(
            o,
            "  {:<8} {:<24} {:<7} since {}  {}",
            fit(&a.severity, 8),
            fit(&a.alertname, 24),
            fit(&a.state, 7),
            rfc3339(a.since),
            plain(&a.summary)
        );
    }
}

/// The text of `status --alerts`: the active alerts, then the alert log, newest first.
pub fn render_alerts(s: &Status, log: &AlertLog, since: &str) -> String {
    let mut o = String::new();
    render_active(s, &mut o);
    let _ = writeln!(
        o,
        "\nALERT LOG (last {}, newest first: {} events)",
        plain(since),
        log.events.len()
    );
    if log.events.is_empty() {
        o.push_str("  nothing fired or resolved\n");
    }
    for e in &log.events {
        let tunnel = e.labels.get("tunnel").map_or("-", String::as_str);
        let _ = writeln!(
            o,
            "  {}  {:<16} {:<8} {:<24} {:<16} {}",
            rfc3339(e.time),
            fit(&e.event, 16),
            fit(&e.severity, 8),
            fit(&e.alertname, 24),
            fit(tunnel, 16),
            plain(&e.summary)
        );
    }
    o
}

fn alerts(
    rt: &tokio::runtime::Runtime,
    ep: &crate::frp::client::Endpoint,
    args: &StatusArgs,
) -> (u8, String, String) {
    let status = match fetch_status(rt, ep) {
        Ok(s) => s,
        Err(e @ FetchError::NoSnapshot) => return (3, String::new(), e.to_string()),
        Err(e) => return (1, String::new(), e.to_string()),
    };
    let query = format!(
        "/api/v1/alerts/history?since={}&limit={}",
        form_urlencoded::byte_serialize(args.since.as_bytes()).collect::<String>(),
        args.limit.clamp(1, 1_000)
    );
    let log = super::get(rt, ep, &query)
        .and_then(|(code, body)| super::decode_data::<AlertLog>(ep, code, &body, "alert log"))
        .map_err(|e| format!("alert log: {e}"));
    match log {
        Ok(log) if args.json => (
            0,
            serde_json::to_string_pretty(&serde_json::json!({"active": status.alerts, "log": log}))
                .expect("alerts serialize")
                + "\n",
            String::new(),
        ),
        Ok(log) => (0, render_alerts(&status, &log, &args.since), String::new()),
        Err(e) => (1, String::new(), e),
    }
}

fn render_system(s: &Status, o: &mut String) {
    let y = &s.system;
    o.push_str("\nSYSTEM\n");
    let _ = writeln!(
        o,
        "  cpu {} of {} CPUs · load {} · memory {} of {} ({})",
        y.cpu_usage_ratio
            .map_or_else(|| "-".into(), |r| format!("{:.1} %", r * 100.0)),
        y.cpus.map_or_else(|| "-".into(), |c| c.to_string()),
        y.load1.map_or_else(|| "-".into(), |l| format!("{l:.2}")),
        y.memory_used_bytes.map_or_else(|| "-".into(), ibytes),
        y.memory_total_bytes.map_or_else(|| "-".into(), ibytes),
        pct(
            y.memory_used_bytes.unwrap_or(0),
            y.memory_total_bytes.unwrap_or(0)
        ),
    );
    for f in &y.filesystems {
        let _ = writeln!(
            o,
            "  disk {:<24} {} of {} ({})",
            fit(&f.mountpoint, 24),
            ibytes(f.used_bytes),
            ibytes(f.size_bytes),
            pct(f.used_bytes, f.size_bytes)
        );
    }
    for n in &y.network {
        let _ = writeln!(
            o,
            "  net  {:<24} in {} · out {}",
            fit(&n.device, 24),
            rate(n.receive_bytes_per_second),
            rate(n.transmit_bytes_per_second)
        );
    }
}
