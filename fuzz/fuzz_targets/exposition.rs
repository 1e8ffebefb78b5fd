//! See `moonfrp_agent::fuzz::exposition`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::exposition(data));
