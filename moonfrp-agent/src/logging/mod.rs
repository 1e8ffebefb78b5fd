//! The agent's log: one line per event on stderr, whatever the event carries, and the recent
//! records in memory for the API ([`ring`]). Names and errors from outside are escaped where they
//! enter ([`crate::untrusted`]); this writer is the last guard, so that no line break or control
//! character inside an event can forge another line.
pub mod ring;

use std::io::{self, IsTerminal as _, Write};

use tracing_subscriber::{
    EnvFilter, fmt::MakeWriter, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Sets up logging at `level` (`RUST_LOG` overrides it): to stderr, and into the process's
/// [`ring::global`] ring.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = io::stderr().is_terminal();
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(OneLine { ansi })
                .with_ansi(ansi),
        )
        .with(ring::RingLayer(ring::global().clone()))
        .init();
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
