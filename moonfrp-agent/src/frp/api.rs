//! Responses of the frps dashboard API (v1 `/api/proxy/{type}` in camelCase and in the
//! snake_case of frps ≤ 0.52, v2 `/api/v2/proxies`, `/api/serverinfo`) and of the frpc admin
//! API (`/api/status`). Every parser turns a bad answer (an HTML page, truncated or mistyped
//! JSON) into an error that says what came back.
//!
//! Answers come from outside: each proxy is parsed on its own from the borrowed answer text (so
//! memory follows the answer's size, not a JSON tree of it), and every string is escaped and
//! bounded where it enters ([`crate::untrusted`]).
use serde::Deserialize;
use serde_json::{Value, value::RawValue};

use crate::untrusted;

/// Proxy types frps serves under `/api/proxy/{type}`.
pub const V1_TYPES: [&str; 8] = [
    "tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp",
];

/// One proxy as frps reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerProxy {
    /// As frps names it: `{user}.{name}` when the client sets `user` (escaped and bounded).
    pub name: String,
    /// The name had to be escaped or cut.
    pub renamed: bool,
    pub kind: String,
    /// The port frps listens on (resolved when the client asked for 0); `None` when offline.
    pub remote_port: Option<u16>,
    /// `online` / `offline` (or whatever frps says).
    pub status: String,
    pub today_traffic_in: u64,
    pub today_traffic_out: u64,
    pub cur_conns: u64,
}

/// What `/api/serverinfo` says about listening ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    pub bind_port: u16,
    pub kcp_bind_port: u16,
    pub quic_bind_port: u16,
    pub vhost_http_port: u16,
    pub vhost_https_port: u16,
}

/// One proxy as frpc reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientProxy {
    pub name: String,
    pub renamed: bool,
    pub kind: String,
    /// `new`, `wait start`, `start error`, `running`, `check failed`, `closed`.
    pub status: String,
    pub err: String,
    pub local_addr: String,
    pub remote_addr: String,
}

/// What came back when an answer is not the JSON asked for.
fn not_json(body: &str, e: &serde_json::Error) -> String {
    let start: String = body.trim_start().chars().take(40).collect();
    if start.starts_with('<') {
        format!(
            "the answer is an HTML page, not JSON (`{}`…): is this the frp web server's address?",
            untrusted::escape(&start)
        )
    } else {
        invalid_json(e)
    }
}

/// serde_json's message quotes a string of the wrong type whole (at any length): it is cut to
/// what an error message can carry.
fn invalid_json(e: &serde_json::Error) -> String {
    format!(
        "the answer is not valid JSON ({})",
        untrusted::message(&e.to_string(), untrusted::MAX_TEXT_CHARS)
    )
}

/// Parses one element of a list (a single proxy: small).
fn element(raw: &RawValue) -> Result<Value, String> {
    serde_json::from_str(raw.get()).map_err(|e| invalid_json(&e))
}

fn u64_of(v: &Value, keys: &[&str], what: &str) -> Result<u64, String> {
    for k in keys {
        match v.get(*k) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                return n
                    .as_u64()
                    .ok_or_else(|| format!("{what}: `{k}` = {n} is not a count"));
            }
            Some(other) => {
                return Err(format!(
                    "{what}: `{k}` must be a number, found `{}`",
                    untrusted::shown(&other.to_string())
                ));
            }
        }
    }
    Ok(0)
}

fn str_of<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str))
}

/// A short word (type, status) from the answer, escaped and bounded.
fn word_of(v: &Value, keys: &[&str]) -> Option<String> {
    str_of(v, keys).map(untrusted::word)
}

/// The proxy's name, escaped and bounded; whether that changed it.
fn name_of(v: &Value, what: impl FnOnce() -> String) -> Result<(String, bool), String> {
    str_of(v, &["name"]).map(untrusted::name).ok_or_else(what)
}

fn port_of(v: Option<&Value>, what: &str) -> Result<Option<u16>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        // 0 means "none" (a disabled listener, or a port frps has not assigned).
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .map(|p| (p != 0).then_some(p))
            .ok_or_else(|| format!("{what}: port {n} is not a port")),
        Some(other) => Err(format!(
            "{what}: port must be a number, found `{}`",
            untrusted::shown(&other.to_string())
        )),
    }
}

#[derive(Deserialize)]
struct V1List<'a> {
    #[serde(borrow)]
    proxies: Option<&'a RawValue>,
}

/// The elements of a JSON list, borrowed from the answer.
fn list<'a>(raw: Option<&'a RawValue>, missing: &str) -> Result<Vec<&'a RawValue>, String> {
    let raw = raw.ok_or_else(|| missing.to_owned())?;
    serde_json::from_str::<Vec<&RawValue>>(raw.get()).map_err(|_| missing.to_owned())
}

/// `GET /api/proxy/{kind}` (both key styles).
pub fn parse_v1(kind: &str, body: &str) -> Result<Vec<ServerProxy>, String> {
    let v: V1List<'_> = serde_json::from_str(body).map_err(|e| not_json(body, &e))?;
    list(v.proxies, "no `proxies` list in the answer")?
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let p = element(raw)?;
            let (name, renamed) = name_of(&p, || format!("proxies[{i}] has no name"))?;
            let what = format!("proxy `{name}`");
            let conf = p.get("conf").filter(|c| !c.is_null());
            let remote = conf.and_then(|c| c.get("remotePort").or_else(|| c.get("remote_port")));
            Ok(ServerProxy {
                kind: conf
                    .and_then(|c| word_of(c, &["type", "proxy_type"]))
                    .unwrap_or_else(|| kind.to_owned()),
                remote_port: port_of(remote, &what)?,
                status: word_of(&p, &["status"]).unwrap_or_default(),
                today_traffic_in: u64_of(&p, &["todayTrafficIn", "today_traffic_in"], &what)?,
                today_traffic_out: u64_of(&p, &["todayTrafficOut", "today_traffic_out"], &what)?,
                cur_conns: u64_of(&p, &["curConns", "cur_conns"], &what)?,
                name,
                renamed,
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct V2Answer<'a> {
    code: Option<Value>,
    msg: Option<Value>,
    #[serde(borrow)]
    data: Option<V2Data<'a>>,
}

#[derive(Deserialize)]
struct V2Data<'a> {
    #[serde(borrow)]
    items: Option<&'a RawValue>,
    total: Option<Value>,
}

/// `GET /api/v2/proxies?page=&pageSize=`: the proxies of this page and the total count.
pub fn parse_v2(body: &str) -> Result<(Vec<ServerProxy>, u64), String> {
    let v: V2Answer<'_> = serde_json::from_str(body).map_err(|e| not_json(body, &e))?;
    let code = v.code.as_ref().and_then(Value::as_u64).unwrap_or(200);
    if code != 200 && code != 0 {
        return Err(format!(
            "frps answered code {code}: {}",
            untrusted::shown(v.msg.as_ref().and_then(Value::as_str).unwrap_or_default())
        ));
    }
    let data = v.data.ok_or("no `data` in the answer")?;
    let items = list(data.items, "no `data.items` list in the answer")?;
    let total = match data.total {
        None | Some(Value::Null) => 0,
        Some(t) => t.as_u64().ok_or("data: `total` must be a count")?,
    };
    let proxies = items
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let p = element(raw)?;
            let (name, renamed) = name_of(&p, || format!("items[{i}] has no name"))?;
            let what = format!("proxy `{name}`");
            let spec = p.get("spec").ok_or_else(|| format!("{what} has no spec"))?;
            let kind_raw = str_of(spec, &["type"]).unwrap_or_default();
            let remote = spec.get(kind_raw).and_then(|t| t.get("remotePort"));
            let status = p
                .get("status")
                .ok_or_else(|| format!("{what} has no status"))?;
            Ok(ServerProxy {
                remote_port: port_of(remote, &what)?,
                status: word_of(status, &["phase"]).unwrap_or_default(),
                today_traffic_in: u64_of(status, &["todayTrafficIn"], &what)?,
                today_traffic_out: u64_of(status, &["todayTrafficOut"], &what)?,
                cur_conns: u64_of(status, &["curConns"], &what)?,
                kind: untrusted::word(kind_raw),
                name,
                renamed,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((proxies, total))
}

/// `GET /api/serverinfo`.
pub fn parse_serverinfo(body: &str) -> Result<ServerInfo, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Info {
        version: Option<Value>,
        bind_port: Option<Value>,
        kcp_bind_port: Option<Value>,
        quic_bind_port: Option<Value>,
        #[serde(rename = "vhostHTTPPort")]
        vhost_http_port: Option<Value>,
        #[serde(rename = "vhostHTTPSPort")]
        vhost_https_port: Option<Value>,
    }
    let v: Info = serde_json::from_str(body).map_err(|e| not_json(body, &e))?;
    let port =
        |p: Option<&Value>| -> Result<u16, String> { Ok(port_of(p, "serverinfo")?.unwrap_or(0)) };
    Ok(ServerInfo {
        version: v
            .version
            .as_ref()
            .and_then(Value::as_str)
            .map(untrusted::word)
            .unwrap_or_default(),
        bind_port: port(v.bind_port.as_ref())?,
        kcp_bind_port: port(v.kcp_bind_port.as_ref())?,
        quic_bind_port: port(v.quic_bind_port.as_ref())?,
        vhost_http_port: port(v.vhost_http_port.as_ref())?,
        vhost_https_port: port(v.vhost_https_port.as_ref())?,
    })
}

/// frpc `GET /api/status`: every proxy of every type (types frpc adds later are kept).
pub fn parse_client_status(body: &str) -> Result<Vec<ClientProxy>, String> {
    if !body.trim_start().starts_with('{') {
        return match serde_json::from_str::<serde::de::IgnoredAny>(body) {
            Err(e) => Err(not_json(body, &e)),
            Ok(_) => Err("the answer is not a JSON object of proxy types".to_owned()),
        };
    }
    let by_type: std::collections::BTreeMap<&str, &RawValue> =
        serde_json::from_str(body).map_err(|e| not_json(body, &e))?;
    let mut out = Vec::new();
    for (kind, raw) in by_type {
        let kind = untrusted::word(kind);
        for raw in list(Some(raw), &format!("`{kind}` must be a list"))? {
            let p = element(raw)?;
            let (name, renamed) = name_of(&p, || format!("a `{kind}` proxy has no name"))?;
            out.push(ClientProxy {
                name,
                renamed,
                kind: word_of(&p, &["type"]).unwrap_or_else(|| kind.clone()),
                status: word_of(&p, &["status"]).unwrap_or_default(),
                err: str_of(&p, &["err"])
                    .map(untrusted::text)
                    .unwrap_or_default(),
                local_addr: str_of(&p, &["local_addr"])
                    .map(untrusted::text)
                    .unwrap_or_default(),
                remote_addr: str_of(&p, &["remote_addr"])
                    .map(untrusted::text)
                    .unwrap_or_default(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    /// Found by the `frp_api` fuzz target (`fuzz/corpus/frp_api/string-quoted-whole`): an answer
    /// that is one long JSON string came back whole inside serde_json's "invalid type" message.
    #[test]
    fn an_answer_of_the_wrong_type_is_not_quoted_at_length() {
        let body = format!("\"{}\"", "tcp\\\\".repeat(2_000));
        for e in [
            parse_v1("tcp", &body).unwrap_err(),
            parse_v2(&body).unwrap_err(),
            parse_serverinfo(&body).unwrap_err(),
            parse_client_status(&body).unwrap_err(),
        ] {
            assert!(e.starts_with("the answer is not"), "{e}");
            assert!(e.chars().count() < 400, "{} characters: {e}", e.len());
        }
    }

    #[test]
    fn v1_current_shape_with_offline_and_resolved_ports() {
        let p = parse_v1("tcp", &fixture("frp/frps-api-v1-proxy-tcp.json")).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].name.as_str(), p[0].remote_port, p[0].status.as_str()),
            ("home.ssh", Some(6000), "online")
        );
        assert_eq!(
            (
                p[0].today_traffic_in,
                p[0].today_traffic_out,
                p[0].cur_conns
            ),
            (1_843_211, 99_120_034, 2)
        );
        // Offline: conf is null, no port, the type comes from the endpoint.
        assert_eq!(
            (p[1].remote_port, p[1].kind.as_str(), p[1].status.as_str()),
            (None, "tcp", "offline")
        );
        // remotePort = 0 in frpc, resolved by frps.
        assert_eq!(
            (p[2].name.as_str(), p[2].remote_port),
            ("home.auto", Some(6042))
        );
        let udp = parse_v1("udp", &fixture("frp/frps-api-v1-proxy-udp.json")).unwrap();
        assert!(udp.iter().all(|p| p.kind == "udp"));
    }

    #[test]
    fn v1_snake_case_of_frps_0_51() {
        let p = parse_v1(
            "tcp",
            &fixture("frp/frps-api-v1-proxy-tcp-legacy-0.51.json"),
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].name.as_str(), p[0].kind.as_str(), p[0].remote_port),
            ("ssh", "tcp", Some(6000))
        );
        assert_eq!(
            (
                p[0].today_traffic_in,
                p[0].today_traffic_out,
                p[0].cur_conns
            ),
            (1200, 56_000, 1)
        );
    }

    #[test]
    fn v2_pages() {
        let (p, total) = parse_v2(&fixture("frp/frps-api-v2-proxies.json")).unwrap();
        assert_eq!(total, 2);
        assert_eq!(
            (p[0].name.as_str(), p[0].kind.as_str(), p[0].remote_port),
            ("home.ssh", "tcp", Some(6000))
        );
        assert_eq!(
            (p[1].kind.as_str(), p[1].remote_port, p[1].status.as_str()),
            ("udp", Some(6053), "online")
        );
        assert_eq!(p[1].today_traffic_out, 131_902);
    }

    #[test]
    fn serverinfo_ports() {
        let s = parse_serverinfo(&fixture("frp/frps-api-v1-serverinfo.json")).unwrap();
        assert_eq!(
            (
                s.version.as_str(),
                s.bind_port,
                s.kcp_bind_port,
                s.vhost_http_port,
                s.quic_bind_port
            ),
            ("0.70.1", 7000, 7000, 8080, 0)
        );
    }

    #[test]
    fn frpc_status_all_types() {
        let p = parse_client_status(&fixture("frp/frpc-api-status.json")).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["auto", "dns", "rdp", "ssh", "web"]);
        assert_eq!(
            (p[2].status.as_str(), p[2].err.as_str()),
            (
                "check failed",
                "health check failed: dial tcp 192.168.1.20:3389: i/o timeout"
            )
        );
        assert_eq!(p[1].kind, "udp");
    }

    #[test]
    fn broken_answers_are_explained() {
        let html = "<!DOCTYPE html><html><body>502 Bad Gateway</body></html>";
        assert!(parse_v1("tcp", html).unwrap_err().contains("HTML page"));
        let truncated = &fixture("frp/frps-api-v1-proxy-tcp.json")[..200];
        assert!(
            parse_v1("tcp", truncated)
                .unwrap_err()
                .contains("not valid JSON")
        );
        let wrong = r#"{"proxies":[{"name":"a","conf":{"remotePort":"6000"},"todayTrafficIn":1}]}"#;
        assert!(
            parse_v1("tcp", wrong)
                .unwrap_err()
                .contains("port must be a number")
        );
        let wrong = r#"{"proxies":[{"name":"a","conf":null,"curConns":"two"}]}"#;
        assert!(
            parse_v1("tcp", wrong)
                .unwrap_err()
                .contains("`curConns` must be a number")
        );
        assert!(
            parse_v1("tcp", r#"{"proxies": 3}"#)
                .unwrap_err()
                .contains("no `proxies` list")
        );
        assert!(
            parse_v2(r#"{"code":500,"msg":"internal error"}"#)
                .unwrap_err()
                .contains("code 500")
        );
        assert!(
            parse_client_status("[1,2]")
                .unwrap_err()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn unknown_proxy_types_are_kept_not_fatal() {
        let v2 = r#"{"code":200,"data":{"total":1,"items":[{"name":"x","spec":{"type":"quic","quic":{"remotePort":7100}},"status":{"phase":"online"}}]}}"#;
        let (p, _) = parse_v2(v2).unwrap();
        assert_eq!((p[0].kind.as_str(), p[0].remote_port), ("quic", Some(7100)));
        let c = parse_client_status(r#"{"sctp":[{"name":"s","status":"running"}]}"#).unwrap();
        assert_eq!(
            (c[0].kind.as_str(), c[0].status.as_str()),
            ("sctp", "running")
        );
    }
}
