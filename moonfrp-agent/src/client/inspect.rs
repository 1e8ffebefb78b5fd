//! `moonfrp-agent inspect`: a tunnel's (or any port's) top peers with bytes and connection
//! attempts, and its connection-duration distribution. A port no tunnel covers is watched for
//! `--seconds` through the running agent, then let go.
use std::{fmt::Write as _, time::Duration};

use clap::Args;
use serde_json::Value;

use super::{ClientArgs, FetchError, bytes, get};
use crate::frp::client::Endpoint;

#[derive(Clone, Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["tunnel", "port"])))]
pub struct InspectArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A watched tunnel, by name.
    #[arg(short, long)]
    pub tunnel: Option<String>,
    /// Any local port (watched for --seconds if no tunnel covers it).
    #[arg(short, long)]
    pub port: Option<u16>,
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub proto: String,
    /// How long to watch a port no tunnel covers.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Peers shown.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// The answer as JSON.
    #[arg(long)]
    pub json: bool,
}

fn ask(
    rt: &tokio::runtime::Runtime,
    ep: &Endpoint,
    method: &str,
    path: &str,
) -> Result<(u16, Value), FetchError> {
    let (code, body) = if method == "GET" {
        get(rt, ep, path)?
    } else {
        match rt.block_on(crate::frp::client::request(
            ep,
            method,
            path,
            Duration::from_secs(5),
        )) {
            Ok((s, b)) => (s.as_u16(), b),
            Err(crate::frp::client::GetError::Unreachable(e)) => {
                return Err(FetchError::NotRunning(e));
            }
            Err(e) => return Err(FetchError::Other(e.to_string())),
        }
    };
    match code {
        401 => return Err(FetchError::Other(super::unauthorized(ep))),
        403 => {
            return Err(FetchError::Other(crate::untrusted::message(
                body.trim(),
                2000,
            )));
        }
        _ => {}
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| {
        FetchError::Other(format!(
            "{}: HTTP {code}, not the agent's API ({e})",
            ep.addr
        ))
    })?;
    Ok((code, v))
}

fn api_error(v: &Value) -> FetchError {
    FetchError::Other(crate::untrusted::message(
        v["error"].as_str().unwrap_or("error"),
        2000,
    ))
}

/// Runs the command: (exit code, stdout, stderr).
pub fn run(args: &InspectArgs) -> (u8, String, String) {
    match inspect(args) {
        Ok((out, note)) => (0, out, note),
        Err(e) => (1, String::new(), e.to_string()),
    }
}

fn inspect(args: &InspectArgs) -> Result<(String, String), FetchError> {
    let ep = args.client.endpoint().map_err(FetchError::Other)?;
    let rt = super::runtime().map_err(FetchError::Other)?;
    let limit = args.limit;
    let mut note = String::new();
    let path = match (&args.tunnel, args.port) {
        (Some(name), _) => {
            let name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
            format!("/api/v1/tunnels/{name}/peers?limit={limit}")
        }
        (None, Some(port)) => format!(
            "/api/v1/peers?port={port}&proto={}&limit={limit}",
            args.proto
        ),
        (None, None) => unreachable!("clap requires one"),
    };
    let (code, mut v) = ask(&rt, &ep, "GET", &path)?;
    if code != 200 {
        return Err(api_error(&v));
    }
    if let (Some(port), Value::Null) = (args.port, &v["data"]["tunnel"]) {
        // No tunnel covers the port: watch it for a while, then let it go.
        let lease = format!(
            "/api/v1/inspect?port={port}&proto={}&ttl={}s",
            args.proto,
            args.seconds + 30
        );
        let (code, l) = ask(&rt, &ep, "POST", &lease)?;
        if code != 200 {
            return Err(api_error(&l));
        }
        eprintln!(
            "moonfrp-agent: watching {port}/{} for {} s …",
            args.proto, args.seconds
        );
        std::thread::sleep(Duration::from_secs(args.seconds));
        let got = ask(&rt, &ep, "GET", &path);
        let _ = ask(
            &rt,
            &ep,
            "DELETE",
            &format!("/api/v1/inspect?port={port}&proto={}", args.proto),
        );
        let (code, after) = got?;
        if code != 200 {
            return Err(api_error(&after));
        }
        v = after;
        let _ = write!(
            note,
            "watched {port}/{} for {} s; no longer watched",
            args.proto, args.seconds
        );
    }
    let d = &v["data"];
    if args.json {
        return Ok((serde_json::to_string_pretty(d).expect("JSON") + "\n", note));
    }
    Ok((render(d), note))
}

/// The peers table and the duration distribution.
pub fn render(d: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} {}/{} · {} peer(s) · peer table {} of {} entries",
        d["tunnel"].as_str().map_or_else(
            || "port".to_owned(),
            |t| format!("tunnel {},", super::plain(t))
        ),
        d["port"],
        super::fit(d["proto"].as_str().unwrap_or("?"), 8),
        d["peers_total"],
        d["table"]["entries"],
        d["table"]["capacity"],
    );
    let peers = d["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        o.push_str("  no traffic seen from any peer yet\n");
    } else {
        let _ = writeln!(
            o,
            "  {:<40} {:>11} {:>11} {:>13} {:>13} {:>8} {:>6}",
            "PEER", "IN", "OUT", "IN PAYLOAD", "OUT PAYLOAD", "PACKETS", "SYNS"
        );
        for p in &peers {
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            #[allow(clippy::cast_precision_loss)]
            let b = |k: &str| bytes(n(k) as f64);
            let _ = writeln!(
                o,
                "  {:<40} {:>11} {:>11} {:>13} {:>13} {:>8} {:>6}",
                super::fit(p["address"].as_str().unwrap_or("?"), 40),
                b("receive_bytes"),
                b("transmit_bytes"),
                n("receive_payload_bytes"),
                n("transmit_payload_bytes"),
                n("packets"),
                n("connection_attempts"),
            );
        }
    }
    let durations = d["durations"].as_array().cloned().unwrap_or_default();
    if !durations.is_empty() {
        o.push_str("  connection durations (closed connections):\n");
        for b in durations {
            let _ = writeln!(
                o,
                "    < {:>10} s  {}",
                b["le_seconds"]
                    .as_f64()
                    .map_or_else(String::new, |s| format!("{s}")),
                b["count"]
            );
        }
    }
    o
}
