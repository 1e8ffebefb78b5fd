//! See `moonfrp_agent::fuzz::frp_api`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::frp_api(data));
