//! See `moonfrp_agent::fuzz::frp_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::frp_config(data));
