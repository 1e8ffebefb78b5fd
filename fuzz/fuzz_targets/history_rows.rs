//! See `moonfrp_agent::fuzz::history_rows`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::history_rows(data));
