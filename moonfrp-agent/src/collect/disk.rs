//! Block devices from /proc/diskstats (procfs). Partitions, loop and ram devices are left out,
//! as node_exporter does.
use procfs::{DiskStats, FromBufRead};

use super::{CollectError, read_file};

const PATH: &str = "/proc/diskstats";
const SECTOR: u64 = 512;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Disk {
    pub name: String,
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub read_seconds: f64,
    pub write_seconds: f64,
    /// Time the device had I/O in flight.
    pub io_seconds: f64,
}

/// Whole disks only: not partitions (vda1, sda2, nvme0n1p1, mmcblk0p1), loop or ram devices.
fn is_whole_disk(name: &str) -> bool {
    let digits_tail = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let is_partition = if name.starts_with("nvme") || name.starts_with("mmcblk") {
        digits_tail.ends_with('p') && digits_tail.len() < name.len()
    } else {
        ["sd", "vd", "hd", "xvd"]
            .iter()
            .any(|p| name.starts_with(p))
            && digits_tail.len() < name.len()
    };
    !(is_partition
        || name.starts_with("loop")
        || name.starts_with("ram")
        || name.starts_with("zram"))
}

pub fn parse(text: &str) -> Result<Vec<Disk>, CollectError> {
    let stats =
        DiskStats::from_buf_read(text.as_bytes()).map_err(|e| CollectError::parse(PATH, e))?;
    let ms = |v: u64| v as f64 / 1000.0;
    let mut out: Vec<Disk> = stats
        .0
        .into_iter()
        .filter(|d| is_whole_disk(&d.name))
        .map(|d| Disk {
            reads: d.reads,
            writes: d.writes,
            // Saturating: a counter past 2^64 bytes must not wrap to a small number.
            read_bytes: d.sectors_read.saturating_mul(SECTOR),
            written_bytes: d.sectors_written.saturating_mul(SECTOR),
            read_seconds: ms(d.time_reading),
            write_seconds: ms(d.time_writing),
            io_seconds: ms(d.time_in_progress),
            name: d.name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn read() -> Result<Vec<Disk>, CollectError> {
    parse(&read_file(PATH)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fixture;

    #[test]
    fn whole_disks_of_every_field_count() {
        let disks = parse(&fixture("proc/diskstats_odd")).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sdb", "vda"]);
        let vda = &disks[2];
        assert_eq!(
            (vda.reads, vda.writes, vda.read_bytes, vda.written_bytes),
            (30_000, 5_000, 2_400_000 * 512, 800_000 * 512)
        );
        assert_eq!(
            (vda.read_seconds, vda.write_seconds, vda.io_seconds),
            (15.0, 9.0, 20.0)
        );
        // A disk that never did any I/O is still listed, with zeros.
        assert_eq!(disks[1].reads, 0);
    }

    /// Found by the `proc_files` fuzz target (`fuzz/corpus/proc_files/disk-sectors-overflow`):
    /// sectors × 512 past 2^64 overflowed.
    #[test]
    fn sector_counts_past_the_byte_range_saturate() {
        let line = "   8       0 vda 1 0 18446744073709551615 0 1 0 36028797018963968 0 0 0 0\n";
        let d = &parse(line).unwrap()[0];
        assert_eq!((d.read_bytes, d.written_bytes), (u64::MAX, u64::MAX));
    }

    #[test]
    fn partitions_are_not_disks() {
        for (name, whole) in [
            ("vda", true),
            ("vda1", false),
            ("nvme0n1", true),
            ("nvme0n1p2", false),
            ("mmcblk0", true),
            ("mmcblk0p1", false),
            ("dm-0", true),
            ("md127", true),
            ("loop3", false),
        ] {
            assert_eq!(is_whole_disk(name), whole, "{name}");
        }
    }

    #[test]
    fn real_table_parses() {
        parse(&fixture("proc/diskstats")).unwrap();
    }
}
