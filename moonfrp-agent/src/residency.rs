//! The agent's resident memory kept to its working set: the executable's read-only pages (code,
//! constants, relocation tables, the embedded eBPF object) that start-up touched once — argument
//! and configuration parsing, loading the kernel programs, opening the history — stay mapped in
//! the process for its whole life unless it lets them go. After the first interval it hands all
//! of them to reclaim (`MADV_PAGEOUT`, what the kernel does to cold file pages under memory
//! pressure; `mm/madvise.c` skips pages another process maps too); what the intervals run is read back
//! from the file a page at a time (`MADV_RANDOM`: no read-around, so neighbouring cold pages are
//! not read back with it), what only start-up ran is not. Dropping the mappings alone
//! (`MADV_DONTNEED`) is not enough: the pages stay in the page cache, and every fault maps the
//! cached pages around it back as well (fault-around, 64 KiB), which brought back nearly all.
//!
//! Measured, 1,000 tunnels at 1 s, release build: file-backed RSS after a minute 7.0–7.1 MiB
//! before, 5.1–5.4 after (two agents side by side, both orders); 30 s after start, one run each:
//! mappings dropped 7.2, paged out 6.2, paged out a page at a time 5.5 (code 2.9 MiB resident of
//! 10, read-only data 0.3 of 3.2). What reading the working set back costs: 72 major faults once.
//!
//! Only segments the program never writes are given back: reading such a page again yields the
//! file's bytes, which for these segments are the bytes the process had. The segments written at
//! start (the dynamic loader's relocations, `.data`, `.bss`) are writable `PT_LOAD`s or lie in
//! them, and are never touched here.
use std::ffi::c_void;

/// Hands the resident pages of the executable's read-only segments to reclaim; returns the bytes
/// of the ranges given (0 where nothing could be done).
pub fn release_read_only_pages() -> usize {
    let mut found = Found {
        inside: release_read_only_pages as fn() -> usize as usize,
        read_only: Vec::new(),
        written: Vec::new(),
    };
    // SAFETY: the callback only reads the entries the loader passes it for the call's duration.
    unsafe { libc::dl_iterate_phdr(Some(each_object), (&raw mut found).cast()) };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut released = 0;
    for &(start, end) in &found.read_only {
        let (mut lo, mut hi) = (start / page * page, end.next_multiple_of(page));
        // A page shared with a written segment is not ours to drop (linkers map segments on
        // pages of their own, so this is only a guard).
        for &(w_start, w_end) in &found.written {
            if (w_start / page * page..w_end.next_multiple_of(page)).contains(&lo) {
                lo += page;
            }
            if (w_start / page * page..w_end.next_multiple_of(page)).contains(&(hi - page)) {
                hi -= page;
            }
        }
        if hi <= lo {
            continue;
        }
        let (at, len) = (lo as *mut c_void, hi - lo);
        // SAFETY: whole pages of a read-only private file mapping of the executable, which
        // nothing writes (not the program: no write permission; not others: the kernel refuses
        // to open a running executable for writing). Advice changes no byte the program sees;
        // reclaimed pages are read back from the same file on their next access. Kernels before
        // 5.4 refuse MADV_PAGEOUT (EINVAL): then nothing is released.
        unsafe {
            libc::madvise(at, len, libc::MADV_RANDOM);
            if libc::madvise(at, len, libc::MADV_PAGEOUT) == 0 {
                released += len;
            }
        }
    }
    released
}

/// What [`each_object`] looks for: the object containing `inside`, and the address ranges of its
/// loaded segments, read-only and written.
struct Found {
    inside: usize,
    read_only: Vec<(usize, usize)>,
    written: Vec<(usize, usize)>,
}

/// `dl_iterate_phdr`'s callback: for the object containing `Found::inside` (the executable),
/// collects the address ranges of its loaded segments, those without write permission apart.
unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid entry, and `data` is the `Found` given to the call.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Found>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers for the call's duration.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = usize::try_from(info.dlpi_addr).unwrap_or(0);
    let range = |h: &libc::Elf64_Phdr| {
        let start = base + usize::try_from(h.p_vaddr).unwrap_or(0);
        (start, start + usize::try_from(h.p_memsz).unwrap_or(0))
    };
    let loads = || headers.iter().filter(|h| h.p_type == libc::PT_LOAD);
    if !loads().any(|h| {
        let (start, end) = range(h);
        (start..end).contains(&found.inside)
    }) {
        return 0;
    }
    for h in loads().filter(|h| h.p_memsz > 0) {
        if h.p_flags & libc::PF_W == 0 {
            found.read_only.push(range(h));
        } else {
            found.written.push(range(h));
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table in the executable's read-only data, read before and after its pages go.
    static TABLE: [u64; 4096] = {
        let mut t = [0u64; 4096];
        let mut i = 0;
        while i < t.len() {
            t[i] = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            i += 1;
        }
        t
    };

    fn resident_file_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn read_only_pages_go_and_their_bytes_come_back_the_same() {
        let sum = |t: &[u64]| t.iter().fold(0u64, |a, &x| a.wrapping_add(x));
        let before = sum(std::hint::black_box(&TABLE));
        let resident = resident_file_kib();
        let released = release_read_only_pages();
        assert!(
            released > 1 << 20,
            "the test binary's code alone is over a MiB: {released}"
        );
        assert!(
            resident_file_kib() < resident,
            "file-backed RSS went down from {resident} KiB"
        );
        // Code runs and data reads back as it was, from the file.
        assert_eq!(sum(std::hint::black_box(&TABLE)), before);
    }
}
