//! See `moonfrp_agent::fuzz::tracefs_format`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::tracefs_format(data));
