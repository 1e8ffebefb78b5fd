//! `POST`/`DELETE /api/v1/inspect`: watch a port for a while on request.
use serde_json::json;

use super::{Answer, error, json_answer, success};
use crate::{cycle::InspectError, untrusted};

/// `POST /api/v1/inspect?port=P[&proto=tcp|udp][&ttl=30s]` watches a port for a while (renew by
/// asking again); `DELETE` with the same port ends it. The port is counted under its tunnel's
/// name if one covers it, else as `inspect-<port>-<proto>` (blocking).
pub fn inspect(
    collector: Option<&std::sync::Mutex<crate::cycle::Cycle>>,
    query: &str,
    start: bool,
) -> Answer {
    let Some(collector) = collector else {
        return error(503, "the collector is not available");
    };
    let mut port = None;
    let mut proto = moonfrp_common::Proto::Tcp;
    let mut ttl = std::time::Duration::from_secs(30);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "port" => match v.parse::<u16>() {
                Ok(p) if p != 0 => port = Some(p),
                _ => {
                    return error(
                        400,
                        &format!(
                            "parameter `port`: `{}` is not a port (1-65535)",
                            untrusted::shown(&v)
                        ),
                    );
                }
            },
            "proto" => match v.as_ref() {
                "tcp" => proto = moonfrp_common::Proto::Tcp,
                "udp" => proto = moonfrp_common::Proto::Udp,
                other => {
                    return error(
                        400,
                        &format!(
                            "parameter `proto`: `{}`: use tcp or udp",
                            untrusted::shown(other)
                        ),
                    );
                }
            },
            "ttl" => match humantime::parse_duration(&v) {
                Ok(d)
                    if (std::time::Duration::from_secs(1)..=std::time::Duration::from_hours(1))
                        .contains(&d) =>
                {
                    ttl = d;
                }
                _ => {
                    return error(
                        400,
                        &format!(
                            "parameter `ttl`: `{}` is not a duration from 1s to 1h",
                            untrusted::shown(&v)
                        ),
                    );
                }
            },
            other => {
                return error(
                    400,
                    &format!(
                        "parameter `{}` is unknown; use port, proto, ttl",
                        untrusted::shown(other)
                    ),
                );
            }
        }
    }
    let Some(port) = port else {
        return error(400, "parameter `port` is missing");
    };
    let mut c = collector
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if start {
        match c.inspect(port, proto, ttl) {
            Ok(name) => success(&json!({
                "tunnel": name,
                "port": port,
                "proto": proto.as_str(),
                "ttl_seconds": ttl.as_secs_f64(),
            })),
            Err(e @ (InspectError::TooMany | InspectError::NoSlot(_))) => {
                error(409, &format!("cannot watch {port}/{}: {e}", proto.as_str()))
            }
            Err(e) => error(500, &format!("cannot watch {port}/{}: {e}", proto.as_str())),
        }
    } else {
        match c.end_inspect(port, proto) {
            Ok(true) => json_answer(200, &json!({ "status": "success" })),
            Ok(false) => error(
                404,
                &format!(
                    "{port}/{} is not being inspected (a tunnel's port ends with the tunnel)",
                    proto.as_str()
                ),
            ),
            Err(e) => error(500, &e.to_string()),
        }
    }
}
