//! Memory and swap from /proc/meminfo (procfs).
use procfs::{FromBufRead, Meminfo};

use super::{CollectError, read_file};

const PATH: &str = "/proc/meminfo";

/// Bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub total: u64,
    pub available: u64,
    pub free: u64,
    /// total − available: what applications hold and cannot give back.
    pub used: u64,
    pub buffers: u64,
    /// Page cache plus reclaimable slab.
    pub cached: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

pub fn parse(text: &str) -> Result<MemorySample, CollectError> {
    // procfs slices lines by byte index: text that is not ASCII (the kernel writes only ASCII
    // here) would panic inside it.
    if !text.is_ascii() {
        return Err(CollectError::parse(PATH, "not ASCII text"));
    }
    // procfs multiplies each value by its unit's factor unchecked (kB by 1024, MB by 1024², …):
    // a product past 2^64 would wrap (or panic in a debug build). No kernel writes one; refuse
    // the file if one is there.
    if let Some(line) = text.lines().find(|l| {
        let mut words = l.split_whitespace().skip(1);
        let (Some(value), unit) = (words.next(), words.next()) else {
            return false;
        };
        let factor: u64 = match unit.map(|u| u.chars().next().unwrap_or('B').to_ascii_uppercase()) {
            Some('K') => 1 << 10,
            Some('M') => 1 << 20,
            Some('G') => 1 << 30,
            _ => 1,
        };
        value
            .parse::<u64>()
            .is_ok_and(|v| v.checked_mul(factor).is_none())
    }) {
        return Err(CollectError::parse(
            PATH,
            format!("a value out of range: `{}`", crate::untrusted::shown(line)),
        ));
    }
    let m = Meminfo::from_buf_read(text.as_bytes()).map_err(|e| CollectError::parse(PATH, e))?;
    // procfs has already turned the file's kB into bytes. Sums saturate: the file is the
    // kernel's, but a wrapped sum would be a wrong number, not an error.
    let available = m.mem_available.unwrap_or(
        m.mem_free
            .saturating_add(m.buffers)
            .saturating_add(m.cached),
    );
    Ok(MemorySample {
        total: m.mem_total,
        available,
        free: m.mem_free,
        used: m.mem_total.saturating_sub(available),
        buffers: m.buffers,
        cached: m.cached.saturating_add(m.s_reclaimable.unwrap_or(0)),
        swap_total: m.swap_total,
        swap_free: m.swap_free,
    })
}

pub fn read() -> Result<MemorySample, CollectError> {
    parse(&read_file(PATH)?)
}

#[cfg(test)]
mod tests {
    /// Found by the `proc_files` fuzz target (`fuzz/corpus/proc_files/meminfo-kb-overflow`).
    #[test]
    fn a_value_past_the_byte_range_is_an_error_not_a_wrap() {
        let text = "MemTotal:  24684084 kB\nMemFree: 18446744073709554 kB\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains("out of range") && e.contains("MemFree"), "{e}");
    }

    /// Found by the `proc_files` fuzz target (`fuzz/corpus/proc_files/meminfo-mb-overflow`):
    /// procfs multiplies an MB value by 1024² unchecked.
    #[test]
    fn a_value_in_mb_past_the_byte_range_is_an_error_not_a_wrap() {
        let text = "MemTotal:  24684084 kB\nMemFree: 46863333348336 MB\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains("out of range") && e.contains("MemFree"), "{e}");
    }

    /// Found by the `proc_files` fuzz target (`fuzz/corpus/proc_files/meminfo-not-ascii`): procfs
    /// cut a line inside a character.
    #[test]
    fn text_that_is_not_ascii_is_an_error_not_a_panic() {
        let e = parse("H  0\u{b7298}\n").unwrap_err().to_string();
        assert!(e.contains("not ASCII"), "{e}");
    }

    use super::*;
    use crate::collect::fixture;

    #[test]
    fn values_in_kb_become_bytes() {
        let text = fixture("proc/meminfo");
        let kb = |key: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{key}:")))
                .unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        let m = parse(&text).unwrap();
        assert_eq!(m.total, kb("MemTotal"));
        assert_eq!(m.available, kb("MemAvailable"));
        assert_eq!(m.used, m.total - m.available);
        assert_eq!(m.swap_total, kb("SwapTotal"));
    }
}
