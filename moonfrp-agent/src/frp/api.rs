//! Responses of the frps dashboard API (v1 `/api/proxy/{type}` in camelCase and in the
//! snake_case of frps ≤ 0.52, v2 `/api/v2/proxies`, `/api/serverinfo`) and of the frpc admin
//! API (`/api/status`). Every parser turns a bad answer (an HTML page, truncated or mistyped
//! JSON) into an error that says what came back.
use serde_json::Value;

/// Proxy types frps serves under `/api/proxy/{type}`.
pub const V1_TYPES: [&str; 8] = [
    "tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp",
];

/// One proxy as frps reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerProxy {
    /// As frps names it: `{user}.{name}` when the client sets `user`.
    pub name: String,
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
    pub kind: String,
    /// `new`, `wait start`, `start error`, `running`, `check failed`, `closed`.
    pub status: String,
    pub err: String,
    pub local_addr: String,
    pub remote_addr: String,
}

/// Parses a JSON body, explaining what came back when it is not JSON.
fn json(body: &str) -> Result<Value, String> {
    serde_json::from_str(body).map_err(|e| {
        let start: String = body.trim_start().chars().take(40).collect();
        if start.starts_with('<') {
            format!("the answer is an HTML page, not JSON (`{start}`…): is this the frp web server's address?")
        } else {
            format!("the answer is not valid JSON ({e})")
        }
    })
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
            Some(other) => return Err(format!("{what}: `{k}` must be a number, found `{other}`")),
        }
    }
    Ok(0)
}

fn str_of<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str))
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
        Some(other) => Err(format!("{what}: port must be a number, found `{other}`")),
    }
}

/// `GET /api/proxy/{kind}` (both key styles).
pub fn parse_v1(kind: &str, body: &str) -> Result<Vec<ServerProxy>, String> {
    let v = json(body)?;
    let list = v
        .get("proxies")
        .and_then(Value::as_array)
        .ok_or("no `proxies` list in the answer")?;
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let name = str_of(p, &["name"])
                .ok_or_else(|| format!("proxies[{i}] has no name"))?
                .to_owned();
            let what = format!("proxy `{name}`");
            let conf = p.get("conf").filter(|c| !c.is_null());
            let remote = conf.and_then(|c| c.get("remotePort").or_else(|| c.get("remote_port")));
            Ok(ServerProxy {
                kind: conf
                    .and_then(|c| str_of(c, &["type", "proxy_type"]))
                    .unwrap_or(kind)
                    .to_owned(),
                remote_port: port_of(remote, &what)?,
                status: str_of(p, &["status"]).unwrap_or_default().to_owned(),
                today_traffic_in: u64_of(p, &["todayTrafficIn", "today_traffic_in"], &what)?,
                today_traffic_out: u64_of(p, &["todayTrafficOut", "today_traffic_out"], &what)?,
                cur_conns: u64_of(p, &["curConns", "cur_conns"], &what)?,
                name,
            })
        })
        .collect()
}

/// `GET /api/v2/proxies?page=&pageSize=`: the proxies of this page and the total count.
pub fn parse_v2(body: &str) -> Result<(Vec<ServerProxy>, u64), String> {
    let v = json(body)?;
    let code = v.get("code").and_then(Value::as_u64).unwrap_or(200);
    if code != 200 && code != 0 {
        return Err(format!(
            "frps answered code {code}: {}",
            str_of(&v, &["msg"]).unwrap_or_default()
        ));
    }
    let data = v.get("data").ok_or("no `data` in the answer")?;
    let items = data
        .get("items")
        .and_then(Value::as_array)
        .ok_or("no `data.items` list in the answer")?;
    let total = u64_of(data, &["total"], "data")?;
    let proxies = items
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = str_of(p, &["name"])
                .ok_or_else(|| format!("items[{i}] has no name"))?
                .to_owned();
            let what = format!("proxy `{name}`");
            let spec = p.get("spec").ok_or_else(|| format!("{what} has no spec"))?;
            let kind = str_of(spec, &["type"]).unwrap_or_default().to_owned();
            let remote = spec.get(&kind).and_then(|t| t.get("remotePort"));
            let status = p
                .get("status")
                .ok_or_else(|| format!("{what} has no status"))?;
            Ok(ServerProxy {
                remote_port: port_of(remote, &what)?,
                status: str_of(status, &["phase"]).unwrap_or_default().to_owned(),
                today_traffic_in: u64_of(status, &["todayTrafficIn"], &what)?,
                today_traffic_out: u64_of(status, &["todayTrafficOut"], &what)?,
                cur_conns: u64_of(status, &["curConns"], &what)?,
                kind,
                name,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((proxies, total))
}

/// `GET /api/serverinfo`.
pub fn parse_serverinfo(body: &str) -> Result<ServerInfo, String> {
    let v = json(body)?;
    let port =
        |k: &str| -> Result<u16, String> { Ok(port_of(v.get(k), "serverinfo")?.unwrap_or(0)) };
    Ok(ServerInfo {
        version: str_of(&v, &["version"]).unwrap_or_default().to_owned(),
        bind_port: port("bindPort")?,
        kcp_bind_port: port("kcpBindPort")?,
        quic_bind_port: port("quicBindPort")?,
        vhost_http_port: port("vhostHTTPPort")?,
        vhost_https_port: port("vhostHTTPSPort")?,
    })
}

/// frpc `GET /api/status`: every proxy of every type (types frpc adds later are kept).
pub fn parse_client_status(body: &str) -> Result<Vec<ClientProxy>, String> {
    let v = json(body)?;
    let by_type = v
        .as_object()
        .ok_or("the answer is not a JSON object of proxy types")?;
    let mut out = Vec::new();
    for (kind, list) in by_type {
        let list = list
            .as_array()
            .ok_or_else(|| format!("`{kind}` must be a list"))?;
        for p in list {
            let name =
                str_of(p, &["name"]).ok_or_else(|| format!("a `{kind}` proxy has no name"))?;
            out.push(ClientProxy {
                name: name.to_owned(),
                kind: str_of(p, &["type"]).unwrap_or(kind).to_owned(),
                status: str_of(p, &["status"]).unwrap_or_default().to_owned(),
                err: str_of(p, &["err"]).unwrap_or_default().to_owned(),
                local_addr: str_of(p, &["local_addr"]).unwrap_or_default().to_owned(),
                remote_addr: str_of(p, &["remote_addr"]).unwrap_or_default().to_owned(),
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
