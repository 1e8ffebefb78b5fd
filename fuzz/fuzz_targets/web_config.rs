//! See `moonfrp_agent::fuzz::web_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::web_config(data));
