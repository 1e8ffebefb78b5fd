//! See `moonfrp_agent::fuzz::alert_rules` (structure-aware: `arbitrary` builds the rules).
#![no_main]
libfuzzer_sys::fuzz_target!(|rules: Vec<moonfrp_agent::fuzz::RuleInput>| {
    moonfrp_agent::fuzz::alert_rules(&rules);
});
