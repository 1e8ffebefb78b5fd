//! See `moonfrp_agent::fuzz::mountinfo`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::mountinfo(data));
