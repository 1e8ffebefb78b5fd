//! See `moonfrp_agent::fuzz::agent_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| moonfrp_agent::fuzz::agent_config(data));
