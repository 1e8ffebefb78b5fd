//! A real SMTP server for the email tests: aiosmtpd (PyPI, installed by `cargo xtask test` into
//! `tests/smtp/.venv`) run by `tests/smtp/server.py`, storing each message it takes as JSON.
use std::{path::PathBuf, time::Duration};

use serde_json::Value;

use crate::{Daemon, free_port, poll, workspace};

/// How the server protects the connection.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Plain,
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// A running SMTP server; stopped when dropped.
pub struct SmtpServer {
    pub port: u16,
    out: tempfile::TempDir,
    daemon: Daemon,
}

impl SmtpServer {
    /// Starts the server on a free loopback port with `cert`/`key` (PEM paths) for TLS and, when
    /// given, one `(user, password)` it requires.
    pub fn start(mode: Mode, tls: Option<(&str, &str)>, auth: Option<(&str, &str)>) -> Self {
        let out = tempfile::tempdir().unwrap();
        let port = free_port();
        let python = workspace().join("tests/smtp/.venv/bin/python");
        let script = workspace().join("tests/smtp/server.py");
        let mut args: Vec<String> = vec![
            script.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--out".into(),
            out.path().display().to_string(),
            "--mode".into(),
            match mode {
                Mode::Plain => "plain",
                Mode::StartTls => "starttls",
                Mode::Tls => "tls",
            }
            .into(),
        ];
        if let Some((cert, key)) = tls {
            args.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
        }
        if let Some((user, password)) = auth {
            args.extend([
                "--user".into(),
                user.into(),
                "--password".into(),
                password.into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start(python.to_str().unwrap(), &args);
        poll("the SMTP server to listen", Duration::from_secs(20), || {
            daemon.log().contains("ready").then_some(())
        });
        Self { port, out, daemon }
    }

    /// The messages taken so far, in order: `{from, to, headers, body, tls, authenticated}`.
    pub fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.out.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .collect()
    }

    /// Waits for the `n`th message (1-based) and returns it.
    pub fn wait_message(&self, n: usize) -> Value {
        poll(
            &format!("message {n} at the SMTP server"),
            crate::TIMEOUT,
            || self.messages().get(n - 1).cloned(),
        )
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// A header of a message, decoded (`subject`, `to`, `from`).
pub fn header(message: &Value, name: &str) -> String {
    message["headers"][name]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A message's text, decoded.
pub fn body(message: &Value) -> String {
    message["body"]
        .as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n")
}
