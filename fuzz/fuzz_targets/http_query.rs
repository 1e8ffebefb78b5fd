//! See `moonfrp_agent::fuzz::http_query`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::http_query(data));
