//! Network interfaces from /proc/net/dev. Parsed here rather than with procfs, whose
//! whitespace split breaks when a counter is wide enough to touch the colon (`eth0:123456789…`).
use super::{CollectError, read_file};

const PATH: &str = "/proc/net/dev";

/// Counters of one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

pub fn parse(text: &str) -> Result<Vec<NetDev>, CollectError> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        // The numbers never contain a colon, so the last one ends the name ("br:lan", "eth0.100").
        let (name, rest) = line
            .rsplit_once(':')
            .ok_or_else(|| CollectError::parse(PATH, format!("no colon in `{line}`")))?;
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| CollectError::parse(PATH, format!("{e} in `{line}`")))?;
        if v.len() < 16 {
            return Err(CollectError::parse(
                PATH,
                format!("{} fields in `{line}`, expected 16", v.len()),
            ));
        }
        out.push(NetDev {
            name: name.trim().to_owned(),
            rx_bytes: v[0],
            rx_packets: v[1],
            rx_errors: v[2],
            rx_drops: v[3],
            tx_bytes: v[8],
            tx_packets: v[9],
            tx_errors: v[10],
            tx_drops: v[11],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn read() -> Result<Vec<NetDev>, CollectError> {
    parse(&read_file(PATH)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    #[test]
    fn real_table() {
        let devs = parse(&fixture("proc/net_dev")).unwrap();
        assert!(
            devs.iter()
                .any(|d| d.name == "lo" && d.rx_bytes == d.tx_bytes && d.rx_bytes > 0)
        );
    }

    #[test]
    fn dots_colons_and_wide_counters() {
        let devs = parse(&fixture("proc/net_dev_odd")).unwrap();
        let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["br:lan", "eth0.100", "lo"]);
        let vlan = &devs[1];
        assert_eq!(
            (
                vlan.rx_bytes,
                vlan.rx_packets,
                vlan.rx_errors,
                vlan.rx_drops
            ),
            (12_345_678_901_234, 98_765_432, 1, 2)
        );
        assert_eq!(
            (
                vlan.tx_bytes,
                vlan.tx_packets,
                vlan.tx_errors,
                vlan.tx_drops
            ),
            (5_555_555_555, 4444, 3, 4)
        );
        assert_eq!(devs[0].rx_bytes, 42);
    }

    #[test]
    fn truncated_line_is_an_error() {
        let err = parse("h\nh\n  lo: 1 2 3\n").unwrap_err().to_string();
        assert!(
            err.contains("/proc/net/dev") && err.contains("3 fields"),
            "{err}"
        );
    }
}
