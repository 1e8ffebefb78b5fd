//! See `moonfrp_agent::fuzz::proc_files`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::proc_files(data));
