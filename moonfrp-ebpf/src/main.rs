//! moonfrp's kernel programs: per-port traffic (cgroup_skb), connection lifecycle and TCP errors
//! (tracepoints). Counters live in per-CPU arrays indexed by a slot that the agent assigns through
//! the watch table; the agent sums CPUs when it reads. Every program is a thin entry point that
//! calls a `try_*` function and never fails the packet or the event.
#![no_std]
#![no_main]

mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
