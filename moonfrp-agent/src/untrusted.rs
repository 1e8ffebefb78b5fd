//! Text and sizes that come from outside the agent — names chosen by whoever runs an frpc, API
//! answers, config files, HTTP clients — are bounded and made printable here, once, where they
//! enter. After that a name is safe as a label value, in a log line and on a terminal.
use std::{
    borrow::Cow,
    fmt::Write as _,
    io::Read as _,
    path::Path,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// Longest tunnel name, in characters (the same bound as names in the agent's config file).
pub const MAX_NAME_CHARS: usize = 128;
/// Longest short word from outside (a proxy type, a status), in characters.
pub const MAX_WORD_CHARS: usize = 32;
/// Longest free text from outside kept (frpc's error for a proxy, a path on a command line).
pub const MAX_TEXT_CHARS: usize = 256;
/// Longest value echoed back in an error message, in characters.
pub const MAX_ECHO_CHARS: usize = 80;

/// Characters a terminal or a log reader would act on or hide: C0/C1 controls, and the Unicode
/// format characters that reorder or hide text (bidi overrides, zero-width characters).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// `s` with every unsafe character written as an escape (`\n`, `\u{1b}`), so that it prints on
/// one line and changes nothing on a terminal. Borrowed when there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A short stable digest of `s` (FNV-1a, 32 bits, hex), so that two long names cut to the same
/// prefix stay apart.
fn digest(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// Cuts an escaped text to `max` characters; a cut one ends with `…~<digest of the whole>`.
fn bounded(raw: &str, max: usize) -> (String, bool) {
    let escaped = escape(raw);
    let changed = matches!(escaped, Cow::Owned(_));
    if escaped.chars().count() <= max {
        return (escaped.into_owned(), changed);
    }
    let tag = format!("…~{}", digest(raw));
    let keep = max.saturating_sub(tag.chars().count());
    let mut out: String = escaped.chars().take(keep).collect();
    out.push_str(&tag);
    (out, true)
}

/// A name from outside as the agent uses it everywhere: unsafe characters escaped, at most
/// [`MAX_NAME_CHARS`] characters (a longer one keeps its start and a digest of the whole, so it
/// stays unique and stable), never empty. The flag says whether it had to change.
pub fn name(raw: &str) -> (String, bool) {
    if raw.is_empty() {
        return ("unnamed".to_owned(), true);
    }
    bounded(raw, MAX_NAME_CHARS)
}

/// A short word from outside (proxy type, status): escaped and cut to [`MAX_WORD_CHARS`].
pub fn word(raw: &str) -> String {
    bounded(raw, MAX_WORD_CHARS).0
}

/// Free text from outside (an error frpc reports, a config path on a command line): escaped
/// and cut to [`MAX_TEXT_CHARS`].
pub fn text(raw: &str) -> String {
    bounded(raw, MAX_TEXT_CHARS).0
}

/// A path from outside (a config's file name) to show in a message: escaped and cut to
/// [`MAX_TEXT_CHARS`].
pub fn path(p: &Path) -> String {
    text(&p.display().to_string())
}

/// A value to echo in an error message: escaped and cut to [`MAX_ECHO_CHARS`], with its full
/// length when cut (a 50 MB value must not become a 50 MB message).
pub fn shown(raw: &str) -> String {
    let (mut s, _) = bounded(raw, MAX_ECHO_CHARS);
    if raw.chars().count() > MAX_ECHO_CHARS {
        let _ = write!(s, " ({} bytes)", raw.len());
    }
    s
}

/// A whole message that may quote outside text: escaped line by line (line breaks kept) and
/// cut to `max` characters.
pub fn message(raw: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, line) in raw.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&escape(line));
        if out.len() > max * 4 {
            break;
        }
    }
    if out.chars().count() > max {
        let mut cut: String = out.chars().take(max).collect();
        cut.push_str("… (cut)");
        return cut;
    }
    out
}

/// Whether a config line sets something secret (`password = …`, `dashboard_pwd`, a token, a
/// webhook URL): such a line is never quoted in an error.
pub(crate) fn sets_secret(line: &str) -> bool {
    let key = line
        .split(['=', ':'])
        .next()
        .unwrap_or(line)
        .to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "token",
        "secret",
        "auth",
        "key",
        "credential",
        "url",
    ]
    .iter()
    .any(|w| key.contains(w))
}

/// `msg` with the value of every line of `input` that sets a secret (as [`sets_secret`] tells)
/// replaced by `(secret)`: parsers quote values in their messages (`invalid type: string "…"`),
/// and a malformed file can make a password part of such a value.
pub fn redact_secrets(msg: &str, input: &str) -> String {
    let mut out = msg.to_owned();
    for value in secret_values(input) {
        if value.chars().count() >= 4 && out.contains(value) {
            out = out.replace(value, "(secret)");
        }
    }
    out
}

/// The values set by the lines of `input` that set a secret (`key = value`, `key: value`),
/// without quotes.
pub(crate) fn secret_values(input: &str) -> impl Iterator<Item = &str> {
    input
        .lines()
        .filter(|l| sets_secret(l))
        .filter_map(|l| l.split_once(['=', ':']))
        .map(|(_, v)| v.trim().trim_matches(['"', '\'', ',']).trim())
}

/// A parse error at byte `offset` of `text`: its line and column, the parser's message (cut,
/// escaped), and — when `quote` is set and the line sets nothing secret — the line itself, cut.
/// Parsers' own renderings quote the offending line whatever it holds; a password must not
/// reach a log that way.
pub fn located(text: &str, offset: usize, message: &str, quote: bool) -> String {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or_default();
    let mut out = format!(
        "line {line_no}, column {column}: {}",
        self::message(&redact_secrets(message.trim(), text), 300)
    );
    if quote && !line.trim().is_empty() {
        if sets_secret(line) {
            out.push_str("\n  | (line not shown: it sets a secret)");
        } else {
            let _ = write!(out, "\n  | {}", shown(line.trim_end()));
        }
    }
    out
}

/// A duration written in a config file (`5m`, `2s`), within `lo..=hi`; the error quotes the
/// value (bounded) and says the range.
pub fn duration_in(
    raw: &str,
    lo: std::time::Duration,
    hi: std::time::Duration,
) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| {
        format!(
            "`{}` is not a duration ({e}); use e.g. 5m or 30s",
            shown(raw)
        )
    })?;
    if d < lo || d > hi {
        return Err(format!(
            "`{}` is out of range; use {}..={}",
            shown(raw),
            humantime::format_duration(lo),
            humantime::format_duration(hi)
        ));
    }
    Ok(d)
}

/// `value` of `key` if it lies in `lo..=hi`, else an error naming the key and the range.
pub fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<T, String> {
    if value < lo || value > hi {
        return Err(format!(
            "key `{key}`: {value} is out of range; use {lo}..={hi}"
        ));
    }
    Ok(value)
}

/// Why a file from outside could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {limit} bytes; this is not a config file (or raise the limit)")]
    TooLarge { limit: u64 },
    #[error("not UTF-8 text")]
    NotText,
    #[error("not a regular file")]
    NotRegular,
}

/// Reads a text file of at most `limit` bytes. Devices, FIFOs and directories are refused
/// before anything is read (`/dev/zero` never ends).
pub fn read_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking open: opening a FIFO for reading would otherwise wait for a writer, and the
    // agent with it (O_NONBLOCK changes nothing for the regular files that are read).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    String::from_utf8(buf).map_err(|_| ReadError::NotText)
}

/// Runs `f`, the reading of one source (a host collector, an frp config file, an frp API's
/// answer), and turns a panic in it into that source's error: a parser bug that some input
/// reaches then costs the source it came from, as a read error would, instead of the collection
/// thread and every other source with it (and, the input being still there after a restart, a
/// crash loop). The payload is escaped and bounded like any outside text; the panic hook has
/// printed the location already.
pub fn contained<T>(source: impl std::fmt::Display, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panicked(source, &*p))
}

/// [`contained`] for a future: a panic while it runs is `source`'s error.
pub async fn contained_async<T>(
    source: String,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(panicked(source, &*p)))
}

/// The error of a source whose reading panicked with `payload` (see [`contained`]).
pub fn panicked(source: impl std::fmt::Display, payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!(
        "a bug in moonfrp: reading {source} panicked ({}); please report it with the input. \
         This source is left out until a read works",
        message(&what, 200)
    )
}

/// Largest secret file read (a password or a token).
const MAX_SECRET_BYTES: u64 = 16 << 10;

/// A secret (a password, a token) from a file of at most 16 KiB, its line end cut.
pub fn read_secret(path: &Path) -> Result<String, ReadError> {
    Ok(read_text(path, MAX_SECRET_BYTES)?
        .trim_end_matches(['\r', '\n'])
        .to_owned())
}

/// Limits that can be reached, each counted in `moonfrp_agent_limit_reached_total{limit}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A name from outside was cut or escaped.
    Name,
    /// An FRP source listed more proxies than `frp.max_proxies`; the rest were left out.
    Proxies,
    /// An HTTP answer (an FRP API's) was larger than allowed; the source failed.
    ResponseSize,
    /// A config file was larger than allowed.
    ConfigSize,
    /// An HTTP request was refused: `max_requests` were running.
    Requests,
    /// A connection was closed at once: `max_connections` were open.
    Connections,
    /// An HTTP request's head was larger than allowed.
    RequestSize,
    /// An inspection was refused: too many running, or no slot left for it.
    Inspections,
    /// A tunnel got no kernel slot (all in use).
    Slots,
    /// FRP processes beyond the cap of identities were left out.
    Processes,
    /// An HTTP request was refused 401 or 403 (no or wrong credentials, a write from
    /// elsewhere without auth).
    Unauthorized,
    /// A TLS handshake failed or took too long (a client without a certificate under mutual
    /// TLS, plain HTTP to the TLS port, a stalled client).
    TlsHandshakes,
    /// Containers beyond `collectors.max_containers` were left out (counted once per interval).
    Containers,
    /// The cgroup tree had more directories than the walk looks at (once per interval).
    CgroupDirs,
}

impl Limit {
    pub const ALL: [Self; 14] = [
        Self::Name,
        Self::Proxies,
        Self::ResponseSize,
        Self::ConfigSize,
        Self::Requests,
        Self::Connections,
        Self::RequestSize,
        Self::Inspections,
        Self::Slots,
        Self::Processes,
        Self::Unauthorized,
        Self::TlsHandshakes,
        Self::Containers,
        Self::CgroupDirs,
    ];

    /// Label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name_length",
            Self::Proxies => "frp_proxies",
            Self::ResponseSize => "http_response_size",
            Self::ConfigSize => "config_size",
            Self::Requests => "http_requests",
            Self::Connections => "http_connections",
            Self::RequestSize => "http_request_size",
            Self::Inspections => "inspections",
            Self::Slots => "watch_slots",
            Self::Processes => "frp_processes",
            Self::Unauthorized => "http_unauthorized",
            Self::TlsHandshakes => "tls_handshakes",
            Self::Containers => "containers",
            Self::CgroupDirs => "cgroup_dirs",
        }
    }

    /// Counts one more time this limit was reached.
    pub fn hit(self) {
        self.hits(1);
    }

    /// Counts `n` more.
    pub fn hits(self, n: u64) {
        HITS[self as usize].fetch_add(n, Relaxed);
    }
}

/// Process-wide counts, read into every snapshot (the HTTP server and the FRP fetchers reach
/// limits between collections).
static HITS: [AtomicU64; Limit::ALL.len()] = [const { AtomicU64::new(0) }; Limit::ALL.len()];

/// Every limit with how often it was reached since start.
pub fn limit_hits() -> Vec<(&'static str, u64)> {
    Limit::ALL
        .iter()
        .map(|l| (l.as_str(), HITS[*l as usize].load(Relaxed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `web_config` fuzz target (`fuzz/corpus/web_config/secret-in-scalar`): YAML
    /// read the file as one string and quoted it, password and all.
    #[test]
    fn secret_values_are_taken_out_of_parser_messages() {
        let input = "tls_ls_serve\n5Zf3PzZ5u#0n3t  key_f8el i:aga0zq5Z5dQe";
        let msg = format!(
            "invalid type: string \"{}\", expected struct File",
            input.replace('\n', " ")
        );
        let out = redact_secrets(&msg, input);
        assert!(
            !out.contains("aga0zq5Z5dQe") && out.contains("(secret)"),
            "{out}"
        );
        assert_eq!(redact_secrets("no value here", input), "no value here");
    }

    #[test]
    fn a_panic_is_the_sources_error_escaped_and_bounded() {
        let e = contained("frp config /x", || -> u8 {
            panic!("bad\u{1b}[2J{}", "x".repeat(500))
        })
        .unwrap_err();
        assert!(
            e.starts_with("a bug in moonfrp: reading frp config /x panicked (bad\\u{1b}[2Jxxx"),
            "{e}"
        );
        assert!(e.len() < 400 && e.contains("(cut)"), "{e}");
        assert_eq!(contained("y", || 5), Ok(5));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(contained_async("127.0.0.1:7500's answer".into(), async {
                let v: Vec<u8> = Vec::new();
                Ok::<u8, String>(v[3])
            }))
            .unwrap_err();
        assert!(
            e.contains("reading 127.0.0.1:7500's answer panicked (index out of bounds"),
            "{e}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cert.pem");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(read_text(&fifo, 1024).map(|_| ())));
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert!(matches!(got, Ok(Err(ReadError::NotRegular))), "{got:?}");
    }

    #[test]
    fn names_are_escaped_bounded_unique_and_stable() {
        assert_eq!(name("home.ssh"), ("home.ssh".to_owned(), false));
        let (n, changed) = name("evil\nERROR forged line\u{1b}]0;title\u{7}");
        assert!(changed);
        assert!(!n.chars().any(is_unsafe), "{n:?}");
        assert_eq!(n, "evil\\nERROR forged line\\u{1b}]0;title\\u{7}");
        let a = "a".repeat(1_000_000);
        let b = format!("{}b", "a".repeat(999_999));
        let (na, _) = name(&a);
        let (nb, _) = name(&b);
        assert_eq!(na.chars().count(), MAX_NAME_CHARS);
        assert_eq!(nb.chars().count(), MAX_NAME_CHARS);
        assert_ne!(na, nb, "two long names cut to one prefix stay apart");
        assert_eq!(name(&a).0, na, "the same name always gives the same label");
        assert!(na.contains("…~"));
        assert_eq!(name("").0, "unnamed");
        // Bidi overrides and zero-width characters are escaped too.
        assert_eq!(escape("a\u{202e}b\u{200b}"), "a\\u{202e}b\\u{200b}");
        // Escaping cannot push a name past the bound.
        let controls = "\u{1}".repeat(1000);
        assert_eq!(name(&controls).0.chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn echoed_values_are_short() {
        let big = "x".repeat(50_000_000);
        let s = shown(&big);
        assert!(s.len() < 200, "{}", s.len());
        assert!(s.ends_with("(50000000 bytes)"), "{s}");
        assert_eq!(shown("6000"), "6000");
        let m = message(&format!("line 1\n{}\nline\u{1b}3", "y".repeat(10_000)), 300);
        assert!(m.chars().count() < 320 && m.starts_with("line 1\n"), "{m}");
        assert!(!m.contains('\u{1b}'));
    }

    #[test]
    fn parse_errors_locate_without_quoting_secrets() {
        let text = "bindPort = 7000\nwebServer.password = \"abc\n";
        let at = text.find("\"abc").unwrap();
        let e = located(text, at, "invalid basic string", true);
        assert!(
            e.starts_with("line 2, column 22: invalid basic string"),
            "{e}"
        );
        assert!(!e.contains("abc"), "{e}");
        let text = "listen = 127.0.0.1:9477\n";
        let e = located(text, 9, "expected a string", true);
        assert!(e.contains("| listen = 127.0.0.1:9477"), "{e}");
        assert!(!located(text, 9, "expected", false).contains("listen ="));
        // An offset inside a multi-byte character or past the end does not panic.
        assert!(located("é = 1", 1, "x", true).starts_with("line 1, column 1"));
        assert!(located("a", 99, "x", true).starts_with("line 1, column 2"));
    }

    #[test]
    fn files_are_read_up_to_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "x = 1\n").unwrap();
        assert_eq!(read_text(&p, 100).unwrap(), "x = 1\n");
        assert!(matches!(
            read_text(&p, 3),
            Err(ReadError::TooLarge { limit: 3 })
        ));
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 1 << 20),
            Err(ReadError::NotRegular)
        ));
        assert!(matches!(
            read_text(dir.path(), 100),
            Err(ReadError::NotRegular)
        ));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_text(&p, 100), Err(ReadError::NotText)));
    }
}
