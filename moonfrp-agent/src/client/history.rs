//! `moonfrp-agent history`: a range of one metric, as a table or CSV, read through the running
//! agent's API or, when no agent answers, straight from the database file.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    config::{Config, Overrides},
    frp::client::{GetError, get_any},
    history::{
        query::{self, Answer, Request},
        store::open_read_only,
    },
    time::unix_ms,
};

/// What to show.
#[derive(Clone, Debug, Args)]
pub struct HistoryArgs {
    /// Metric name as on /metrics, e.g. moonfrp_tunnel_receive_bytes_total.
    #[arg(short, long)]
    pub metric: String,
    /// Only this tunnel.
    #[arg(short, long)]
    pub tunnel: Option<String>,
    /// Only series with this label value (repeat for more), e.g. --label device=eth0.
    #[arg(long, value_name = "NAME=VALUE")]
    pub label: Vec<String>,
    /// How far back, e.g. 6h [default: 1h]; or give --from.
    #[arg(short, long, conflicts_with = "from")]
    pub since: Option<String>,
    /// Start: RFC 3339, Unix seconds, or now-6h.
    #[arg(long)]
    pub from: Option<String>,
    /// End [default: now].
    #[arg(long)]
    pub to: Option<String>,
    /// Bucket width (e.g. 5m); without it every stored point.
    #[arg(long)]
    pub step: Option<String>,
    /// Per-second rates of a counter.
    #[arg(long)]
    pub rate: bool,
    /// mean, min, max or last, when points are bucketed.
    #[arg(long)]
    pub agg: Option<String>,
    /// CSV with a header instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// Read the database file even if the agent is running.
    #[arg(long)]
    pub offline: bool,
    /// The agent's configuration file (for its listen address and data directory).
    #[arg(short, long, value_name = "PATH", env = "MOONFRP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The agent's HTTP address [default: from the config, else 127.0.0.1:9477].
    #[arg(short, long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// The agent's data directory [default: from the config, else /var/lib/moonfrp].
    #[arg(long, value_name = "DIR", env = "MOONFRP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub access: super::AccessArgs,
    /// How long the agent may take to answer.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why the command failed, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

impl HistoryArgs {
    fn query_string(&self, csv: bool) -> Result<String, CliError> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("metric", &self.metric);
        if let Some(t) = &self.tunnel {
            q.append_pair("tunnel", t);
        }
        for l in &self.label {
            let (k, v) = l.split_once('=').ok_or_else(|| {
                CliError::Usage(format!(
                    "--label {l}: expected NAME=VALUE, e.g. device=eth0"
                ))
            })?;
            q.append_pair(k, v);
        }
        for (key, value) in [
            ("since", &self.since),
            ("from", &self.from),
            ("to", &self.to),
            ("step", &self.step),
            ("agg", &self.agg),
        ] {
            if let Some(v) = value {
                q.append_pair(key, v);
            }
        }
        if self.rate {
            q.append_pair("rate", "true");
        }
        if csv {
            q.append_pair("format", "csv");
        }
        Ok(q.finish())
    }
}

/// Largest answer read from the agent (a long range of many series as JSON).
const MAX_ANSWER: u64 = 512 << 20;

/// Runs the command; the text to print.
pub fn run(args: &HistoryArgs) -> Result<String, CliError> {
    let config = Config::load(
        args.config.as_deref(),
        &Overrides {
            listen: args.listen.clone(),
            data_dir: args.data_dir.clone(),
            ..Overrides::default()
        },
    )
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let query_string = args.query_string(false)?;
    let path = config.start.history.db_path();
    if !args.offline {
        match ask_agent(&config, &args.access, &query_string, args.timeout) {
            Ok(answer) => return Ok(render(&answer, args.csv)),
            Err(Some(e)) => return Err(e),
            // An agent at an address of the user's choosing keeps its history where its own
            // config says; the default data directory would be another agent's.
            Err(None)
                if args.listen.is_some() && args.config.is_none() && args.data_dir.is_none() =>
            {
                return Err(CliError::Failed(format!(
                    "no agent answers on {}; to read its history from the file, give its --data-dir or its config (-c)",
                    config.start.listen
                )));
            }
            Err(None) => eprintln!(
                "moonfrp-agent: no agent answers on {}; reading {} directly",
                config.start.listen,
                path.display()
            ),
        }
    }
    let now = unix_ms(std::time::SystemTime::now());
    let (req, _) =
        Request::from_query(&query_string, now).map_err(|e| CliError::Usage(e.to_string()))?;
    if !path.exists() {
        return Err(CliError::Failed(format!(
            "no history database at {} (the agent has not run with this data directory; see --data-dir)",
            path.display()
        )));
    }
    let conn = open_read_only(&path)
        .map_err(|e| CliError::Failed(format!("cannot open {}: {e}", path.display())))?;
    let answer = query::run(&conn, &config.start.history.settings, &req, now).map_err(|e| {
        if e.status() < 500 {
            CliError::Usage(e.to_string())
        } else {
            CliError::Failed(e.to_string())
        }
    })?;
    Ok(render(&answer, args.csv))
}

/// The agent's answer; `Err(None)` when nobody listens (fall back to the file). An agent that
/// accepts the connection but does not answer is an error, not a reason to read some file.
fn ask_agent(
    config: &Config,
    access: &super::AccessArgs,
    query_string: &str,
    timeout: Duration,
) -> Result<Answer, Option<CliError>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Some(CliError::Failed(format!("cannot start a runtime: {e}"))))?;
    let ep = access
        .endpoint(config.start.listen, MAX_ANSWER)
        .map_err(|e| Some(CliError::Usage(e)))?;
    let path = format!("/api/v1/history?{query_string}");
    let (status, body) = match rt.block_on(get_any(&ep, &path, timeout)) {
        Ok(r) => r,
        Err(GetError::Unreachable(_)) => return Err(None),
        Err(GetError::Timeout(e)) => {
            return Err(Some(CliError::Failed(format!(
                "{e}; is the agent overloaded? Try again, or read the file with --offline (and --data-dir)"
            ))));
        }
        Err(e) => return Err(Some(CliError::Failed(e.to_string()))),
    };
    if status == hyper::StatusCode::UNAUTHORIZED {
        return Err(Some(CliError::Failed(super::unauthorized(&ep))));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
        Some(CliError::Failed(format!(
            "{} answered {status} with something that is not the history API ({e}); is it moonfrp-agent?",
            config.start.listen
        )))
    })?;
    if !status.is_success() {
        let msg = crate::untrusted::message(v["error"].as_str().unwrap_or("error"), 2000);
        return Err(Some(if status.is_client_error() {
            CliError::Usage(msg)
        } else {
            CliError::Failed(msg)
        }));
    }
    serde_json::from_value(v["data"].clone()).map_err(|e| {
        Some(CliError::Failed(format!(
            "unexpected answer from the agent: {e}"
        )))
    })
}

fn render(a: &Answer, csv: bool) -> String {
    if csv {
        return query::to_csv(a);
    }
    let mut out = String::new();
    if a.series.is_empty() {
        out.push_str("no series match in this range\n");
    }
    for s in &a.series {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let unit = match (a.rate, s.unit.as_str()) {
            (true, "") => " (per second)".to_owned(),
            (true, u) => format!(" ({u} per second)"),
            (false, "") => String::new(),
            (false, u) => format!(" ({u})"),
        };
        let _ = writeln!(
            out,
            "{}{{{}}}{unit}, {} resolution, {} points",
            s.metric,
            labels.join(","),
            a.resolution,
            s.samples.len()
        );
        for (ts, v) in &s.samples {
            let _ = writeln!(out, "  {}  {v}", crate::time::rfc3339(*ts));
        }
    }
    out
}
