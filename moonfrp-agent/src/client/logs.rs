//! `moonfrp-agent logs`: the running agent's recent log records (`GET /api/v1/logs`), and with
//! `-f` the new ones as they come (long polling), one line each.
use std::{fmt::Write as _, io::Write as _, time::Duration};

use clap::Args;

use super::{ClientArgs, FetchError, call, decode_data, plain};
use crate::{
    frp::client::Endpoint,
    logging::ring::{Page, Record},
    time::rfc3339,
};

#[derive(Clone, Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Keep following: print new records as the agent logs them (until interrupted).
    #[arg(short, long)]
    pub follow: bool,
    /// Least severe level shown: error, warn, info, debug or trace.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub level: String,
    /// Only records of this recent past (e.g. 10m, 2h).
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Most records shown at first (the newest).
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: usize,
    /// One JSON object per record (JSON lines), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// How long one follow request waits at the agent for the next record.
const FOLLOW_WAIT: Duration = Duration::from_secs(25);

/// A record as one plain line: time, level, target, message, fields.
pub fn line(r: &Record) -> String {
    let mut o = format!(
        "{} {:<5} {}: {}",
        rfc3339(r.time),
        r.level.to_ascii_uppercase(),
        plain(&r.target),
        plain(&r.message)
    );
    for (k, v) in &r.fields {
        let _ = write!(o, " {}={}", plain(k), plain(v));
    }
    o
}

fn fetch(
    rt: &tokio::runtime::Runtime,
    ep: &Endpoint,
    query: &str,
    timeout: Duration,
) -> Result<Page, FetchError> {
    let (code, body) = call(rt, ep, "GET", &format!("/api/v1/logs?{query}"), timeout)?;
    decode_data(ep, code, &body, "log page")
}

fn print(records: &[Record], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for r in records {
        if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(r).expect("records serialize")
            )?;
        } else {
            writeln!(out, "{}", line(r))?;
        }
    }
    out.flush()
}

/// Runs the command: (exit code, text for stdout, text for stderr). Records are printed as they
/// come, so stdout's part is empty.
pub fn run(args: &LogsArgs) -> (u8, String, String) {
    let (ep, rt) = match super::start(&args.client) {
        Ok(v) => v,
        Err(exit) => return exit,
    };
    let mut query = format!(
        "level={}&limit={}",
        args.level,
        args.limit.clamp(1, crate::logging::ring::MAX_RECORDS)
    );
    if let Some(s) = &args.since {
        let _ = write!(
            query,
            "&since={}",
            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
        );
    }
    let mut page = match fetch(&rt, &ep, &query, Duration::from_secs(5)) {
        Ok(p) => p,
        Err(e) => return (1, String::new(), e.to_string()),
    };
    loop {
        if print(&page.records, args.json).is_err() {
            return (0, String::new(), String::new());
        }
        if !args.follow {
            return (0, String::new(), String::new());
        }
        let after = page.last;
        let follow = format!(
            "level={}&after={after}&limit={}&wait={}s",
            args.level,
            crate::logging::ring::MAX_RECORDS,
            FOLLOW_WAIT.as_secs()
        );
        page = match fetch(&rt, &ep, &follow, FOLLOW_WAIT + Duration::from_secs(10)) {
            Ok(p) => p,
            Err(e) => return (1, String::new(), e.to_string()),
        };
        if page.missed > 0 {
            eprintln!(
                "moonfrp-agent: {} records were dropped by the agent's log ring (at most {} records, {} bytes) before they could be shown",
                page.missed, page.max_records, page.max_bytes
            );
        }
    }
}
