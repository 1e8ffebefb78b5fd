//! See `moonfrp_agent::fuzz::sock_diag`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::sock_diag(data));
