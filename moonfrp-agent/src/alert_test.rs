//! `moonfrp-agent alert-test`: sends a clearly marked test notification through the configured
//! alert channels (or one) straight from this process — no running agent needed — and reports
//! what each channel answered. The running agent does the same on `POST /api/v1/alerts/test`.
use std::fmt::Write as _;

use crate::{alerts, config::Config, untrusted::escape};

/// Runs the command: (exit code, stdout, stderr). 0: every channel took the notification; 1: one
/// did not; 2: alerts are off, there are no channels, or the one named does not exist.
pub fn run(config: &Config, channel: Option<&str>, json: bool) -> (u8, String, String) {
    let cfg = &config.start.alerts;
    if !cfg.enabled {
        return (
            2,
            String::new(),
            "alerts are disabled in the configuration ([alerts] enabled = false)".into(),
        );
    }
    let rt = match crate::client::runtime() {
        Ok(rt) => rt,
        Err(e) => return (1, String::new(), e),
    };
    let generator = alerts::generator(&config.start.listen.to_string());
    let results = match rt.block_on(alerts::send_tests(&cfg.channels, channel, &generator)) {
        Ok(r) => r,
        Err(e) => return (2, String::new(), e.to_string()),
    };
    let failed = results.iter().filter(|r| !r.ok).count();
    let mut out = String::new();
    if json {
        out = serde_json::to_string_pretty(&results).expect("results serialize") + "\n";
    } else {
        for r in &results {
            let _ = writeln!(
                out,
                "{} {}: {} — {}",
                r.kind,
                escape(&r.channel),
                if r.ok { "sent" } else { "FAILED" },
                escape(&r.answer)
            );
        }
    }
    let err = if failed > 0 {
        format!(
            "{failed} of {} channel(s) did not take the test notification",
            results.len()
        )
    } else {
        String::new()
    };
    (u8::from(failed > 0), out, err)
}
