//! Host TCP counters that explain tunnel trouble, from /proc/net/snmp and /proc/net/netstat.
//! Both files are pairs of lines (`Tcp: names…` / `Tcp: values…`); columns are matched by name,
//! so kernels that add columns are read just the same.
use std::collections::HashMap;

use super::{CollectError, read_file};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTcp {
    pub retrans_segs: u64,
    pub out_rsts: u64,
    pub curr_estab: u64,
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub active_opens: u64,
    pub passive_opens: u64,
}

/// `Section:Name` → value for every pair of lines.
pub fn parse_pairs(path: &str, text: &str) -> Result<HashMap<String, i64>, CollectError> {
    let mut out = HashMap::new();
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines
            .next()
            .ok_or_else(|| CollectError::parse(path, "header line without values"))?;
        let (section, names) = names
            .split_once(':')
            .ok_or_else(|| CollectError::parse(path, "no section"))?;
        let (section2, values) = values
            .split_once(':')
            .ok_or_else(|| CollectError::parse(path, "no section"))?;
        if section != section2 {
            return Err(CollectError::parse(
                path,
                format!("section {section} followed by {section2}"),
            ));
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            return Err(CollectError::parse(
                path,
                format!("{section}: {} names, {} values", names.len(), values.len()),
            ));
        }
        for (n, v) in names.into_iter().zip(values) {
            let v = v
                .parse::<i64>()
                .map_err(|e| CollectError::parse(path, format!("{section}:{n}: {e}")))?;
            out.insert(format!("{section}:{n}"), v);
        }
    }
    Ok(out)
}

pub fn parse(snmp: &str, netstat: &str) -> Result<HostTcp, CollectError> {
    let s = parse_pairs("/proc/net/snmp", snmp)?;
    let n = parse_pairs("/proc/net/netstat", netstat)?;
    let get = |m: &HashMap<String, i64>, path: &str, key: &str| {
        m.get(key)
            .map(|v| u64::try_from(*v).unwrap_or(0))
            .ok_or_else(|| CollectError::parse(path, format!("no {key}")))
    };
    Ok(HostTcp {
        retrans_segs: get(&s, "/proc/net/snmp", "Tcp:RetransSegs")?,
        out_rsts: get(&s, "/proc/net/snmp", "Tcp:OutRsts")?,
        curr_estab: get(&s, "/proc/net/snmp", "Tcp:CurrEstab")?,
        active_opens: get(&s, "/proc/net/snmp", "Tcp:ActiveOpens")?,
        passive_opens: get(&s, "/proc/net/snmp", "Tcp:PassiveOpens")?,
        listen_overflows: get(&n, "/proc/net/netstat", "TcpExt:ListenOverflows")?,
        listen_drops: get(&n, "/proc/net/netstat", "TcpExt:ListenDrops")?,
    })
}

pub fn read() -> Result<HostTcp, CollectError> {
    parse(
        &read_file("/proc/net/snmp")?,
        &read_file("/proc/net/netstat")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    #[test]
    fn real_files_and_extra_columns_agree() {
        let base = parse(&fixture("proc/net_snmp"), &fixture("proc/net_netstat")).unwrap();
        let extra = parse(
            &fixture("proc/net_snmp_extra"),
            &fixture("proc/net_netstat"),
        )
        .unwrap();
        assert_eq!(base, extra);
        assert!(base.active_opens > 0);
        let pairs = parse_pairs("x", &fixture("proc/net_snmp_extra")).unwrap();
        assert_eq!(pairs["Tcp:FutureCounter"], 77);
        // MaxConn is -1 in the real file: signed values parse.
        assert_eq!(pairs["Tcp:MaxConn"], -1);
    }

    #[test]
    fn mismatched_lines_are_errors() {
        assert!(
            parse_pairs("/proc/net/snmp", "Tcp: A B\nTcp: 1\n")
                .unwrap_err()
                .to_string()
                .contains("2 names, 1 values")
        );
        assert!(parse_pairs("/proc/net/snmp", "Tcp: A\n").is_err());
        assert!(
            parse("Tcp: A\nTcp: 1\n", "TcpExt: B\nTcpExt: 2\n")
                .unwrap_err()
                .to_string()
                .contains("RetransSegs")
        );
    }
}
