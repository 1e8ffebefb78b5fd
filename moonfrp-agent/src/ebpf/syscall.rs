//! The `bpf()` commands the agent issues itself, where aya 0.14 has no call: pinned-object
//! lookups and link updates (`pins`), and batch reads of the counter arrays (`maps`).
use std::{io, os::fd::BorrowedFd};

/// `bpf(cmd, attr)`: its non-negative result, or the error. Mutable: some commands write their
/// results back into `attr`.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member `cmd` reads, with any pointer in it valid for the
/// call.
pub unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller's promise; the size passed is the attr's own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+) of keys `0..count` of a per-CPU array whose values are
/// `V`: every possible CPU's value of every key, key-major (`cpus` values per key), in one
/// system call instead of one per key.
///
/// `V` must be the map's value type and a multiple of 8 bytes (the kernel pads each CPU's value
/// to 8); `cpus` the number of possible CPUs (`aya::util::nr_cpus`).
pub fn percpu_array_batch<V: aya::Pod>(
    fd: BorrowedFd<'_>,
    count: u32,
    cpus: usize,
) -> io::Result<Vec<V>> {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    struct LookupBatch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    if !size_of::<V>().is_multiple_of(8) {
        return Err(io::Error::other(
            "the value type is not a multiple of 8 bytes",
        ));
    }
    let n = count as usize;
    let len = n
        .checked_mul(cpus)
        .ok_or_else(|| io::Error::other("too many values"))?;
    let mut keys = vec![0u32; n];
    let mut values: Vec<V> = Vec::with_capacity(len);
    let mut next = 0u32;
    let mut attr = LookupBatch {
        in_batch: 0,
        out_batch: std::ptr::from_mut(&mut next) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd().cast_unsigned(),
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: BPF_MAP_LOOKUP_BATCH's attr. The kernel writes at most `count` keys (4 bytes each,
    // an array's key size) into `keys`, `count * cpus` values of `size_of::<V>()` bytes into
    // `values` (capacity reserved above) and one key into `next`, then the number it filled
    // into `attr.count`.
    let result = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
    match result {
        // ENOENT: the array ended before `count` keys; what was filled is still valid.
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let filled = (attr.count as usize).min(n);
    // SAFETY: the kernel filled `filled * cpus` values, each a `V` (Pod: any bytes are valid).
    unsafe { values.set_len(filled * cpus) };
    Ok(values)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};

    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Pair(u64, u64);
    // SAFETY: two u64, no padding.
    unsafe impl aya::Pod for Pair {}

    /// A per-CPU array of `entries` `Pair`s, made with `BPF_MAP_CREATE`.
    fn percpu_array(entries: u32) -> io::Result<OwnedFd> {
        #[repr(C)]
        struct Create {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let mut attr = Create {
            map_type: 6, // BPF_MAP_TYPE_PERCPU_ARRAY
            key_size: 4,
            value_size: size_of::<Pair>() as u32,
            max_entries: entries,
            map_flags: 0,
        };
        // SAFETY: BPF_MAP_CREATE's attr (its leading fields), no pointers.
        let fd = unsafe { sys_bpf(0, &mut attr) }?;
        // SAFETY: a new descriptor the call returned, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) })
    }

    /// Writes every CPU's value of `key` (`BPF_MAP_UPDATE_ELEM`).
    fn set(fd: &OwnedFd, key: u32, values: &[Pair]) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        #[repr(C)]
        struct Elem {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut attr = Elem {
            map_fd: fd.as_raw_fd().cast_unsigned(),
            _pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: values.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: BPF_MAP_UPDATE_ELEM's attr; key and values outlive the call.
        unsafe { sys_bpf(2, &mut attr) }.map(|_| ())
    }

    /// Against a real kernel map (needs root): one call returns what key-by-key writes put there,
    /// every CPU's value in order; a count past the array's end returns what there is.
    #[test]
    fn a_batch_read_returns_every_cpus_value_of_every_key() {
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let map = percpu_array(10).expect("BPF_MAP_CREATE (as root: `cargo xtask test` is)");
        let value = |k: u32, c: usize| Pair(u64::from(k) * 1_000 + c as u64, u64::from(k) << 40);
        for k in [0, 3, 9] {
            let v: Vec<Pair> = (0..cpus).map(|c| value(k, c)).collect();
            set(&map, k, &v).expect("BPF_MAP_UPDATE_ELEM");
        }
        let got: Vec<Pair> = percpu_array_batch(map.as_fd(), 5, cpus).expect("batch");
        assert_eq!(got.len(), 5 * cpus);
        for k in 0..5u32 {
            for c in 0..cpus {
                let want = if k == 0 || k == 3 {
                    value(k, c)
                } else {
                    Pair::default()
                };
                assert_eq!(got[k as usize * cpus + c], want, "key {k} cpu {c}");
            }
        }
        let all: Vec<Pair> = percpu_array_batch(map.as_fd(), 64, cpus).expect("past the end");
        assert_eq!(all.len(), 10 * cpus);
        assert_eq!(
            all[9 * cpus..],
            (0..cpus).map(|c| value(9, c)).collect::<Vec<_>>()[..]
        );
    }
}
