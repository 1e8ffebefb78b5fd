//! The agent's log: one line per event on stderr, whatever the event carries, and the recent
//! records in memory for the API ([`ring`]). Names and errors from outside are escaped where they
//! enter ([`crate::untrusted`]); this writer is the last guard, so that no line break or control
//! character inside an event can forge another line.
pub mod ring;

use std::io::{self, IsTerminal as _, Write};

use tracing_subscriber::{
    EnvFilter, fmt::MakeWriter, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Sets up logging at `level` (`RUST_LOG` overrides it): to journald with structured fields
/// when systemd connected stderr to the journal ([`stderr_is_journal`]), else to stderr; and in
/// both cases into the process's [`ring::global`] ring.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let journal = stderr_is_journal().then(|| match tracing_journald::layer() {
        // Syslog's levels as journalctl -p reads them (the crate's default calls info
        // "notice").
        Ok(l) => Ok(l
            .with_syslog_identifier("moonfrp-agent".into())
            .with_field_prefix(Some("MOONFRP".into()))
            .with_priority_mappings(tracing_journald::PriorityMappings {
                info: tracing_journald::Priority::Informational,
                debug: tracing_journald::Priority::Debug,
                ..tracing_journald::PriorityMappings::new()
            })),
        Err(e) => Err(e),
    });
    let (journald, journal_error) = match journal {
        Some(Ok(l)) => (Some(l), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let ansi = io::stderr().is_terminal();
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(OneLine { ansi })
            .with_ansi(ansi)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .with(ring::RingLayer(ring::global().clone()))
        .init();
    if let Some(e) = journal_error {
        tracing::warn!(error = %e, "stderr goes to the journal but its socket does not answer; logging to stderr as plain lines");
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM=<device>:<inode>` of the
/// stream it connects (see systemd.exec(5)); a child whose stderr was redirected elsewhere keeps
/// the variable but not the stream.
pub fn stderr_is_journal() -> bool {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
    let Ok(want) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // fstat(2) through a duplicate of the descriptor (closed again at once).
    let Ok(meta) = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
    else {
        return false;
    };
    want == format!("{}:{}", meta.dev(), meta.ino())
}

/// Makes [`OneLineWriter`]s over stderr.
#[derive(Clone, Copy, Debug)]
pub struct OneLine {
    /// Colors are on: ESC is the formatter's own (it escapes ESC inside values itself).
    pub ansi: bool,
}

impl<'a> MakeWriter<'a> for OneLine {
    type Writer = OneLineWriter<io::StderrLock<'static>>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLineWriter {
            inner: io::stderr().lock(),
            ansi: self.ansi,
        }
    }
}

/// Writes each formatted event with every control character but its final line break (and
/// tabs, and ESC when colors are on) escaped.
#[derive(Debug)]
pub struct OneLineWriter<W> {
    pub inner: W,
    pub ansi: bool,
}

/// `event` with inner line breaks and control characters escaped (`\n`, `\x07`).
pub fn one_line(event: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0x1b if ansi => out.push(b),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter hands over a whole event at once.
        self.inner.write_all(&one_line(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn an_event_stays_one_line() {
        let forged = b"WARN frp source failed error=x\n2026-01-01T00:00:00Z ERROR forged\r\x07\n";
        let out = String::from_utf8(one_line(forged, false)).unwrap();
        assert_eq!(
            out,
            "WARN frp source failed error=x\\n2026-01-01T00:00:00Z ERROR forged\\r\\x07\n"
        );
        assert_eq!(out.matches('\n').count(), 1);
        assert_eq!(
            one_line(b"\x1b[31mERROR\x1b[0m x\n", true),
            b"\x1b[31mERROR\x1b[0m x\n"
        );
        assert_eq!(one_line(b"\x1b]0;t\x07\n", false), b"\\x1b]0;t\\x07\n");
    }
}
