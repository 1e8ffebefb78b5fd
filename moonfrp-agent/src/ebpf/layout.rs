//! Tracepoint layouts read from tracefs `format` files, so the programs read the right offsets on
//! whatever kernel runs them.
use std::{collections::HashMap, path::Path};

use moonfrp_common::{NO_FIELD, TracepointLayout};

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// A parsed format file: fields by name, and the `print fmt` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: HashMap<String, Field>,
    pub print_fmt: String,
}

/// A tracepoint whose layout could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("{tracepoint}: no field `{field}` in its format file (kernel layout not supported)")]
    MissingField {
        tracepoint: &'static str,
        field: &'static str,
    },
    #[error("{tracepoint}: field `{field}` has size {size}, expected {expected}")]
    FieldSize {
        tracepoint: &'static str,
        field: &'static str,
        size: u32,
        expected: u32,
    },
    #[error(
        "{tracepoint}: cannot read {path}: {reason} (is tracefs mounted at /sys/kernel/tracing?)"
    )]
    Unreadable {
        tracepoint: &'static str,
        path: String,
        reason: String,
    },
}

/// Parses the text of a tracefs `format` file.
pub fn parse_format(text: &str) -> Format {
    let mut out = Format::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(fmt) = line.strip_prefix("print fmt:") {
            fmt.trim().clone_into(&mut out.print_fmt);
            continue;
        }
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        // The name is the declaration's last word, without any array suffix: `__u8 saddr[28]`.
        let name = decl.rsplit([' ', '*']).next().unwrap_or(decl);
        let name = name.split('[').next().unwrap_or(name);
        if let (Some(offset), Some(size)) = (offset, size) {
            out.fields.insert(name.to_owned(), Field { offset, size });
        }
    }
    out
}

/// The numeric value given to `symbol` in a `__print_symbolic(..., { 1, "NO_SOCKET" }, ...)` list.
pub fn symbolic_value(print_fmt: &str, symbol: &str) -> Option<u32> {
    let needle = format!("\"{symbol}\"");
    let at = print_fmt.find(&needle)?;
    let before = &print_fmt[..at];
    let open = before.rfind('{')?;
    before[open + 1..]
        .trim()
        .trim_end_matches(',')
        .trim()
        .parse()
        .ok()
}

fn field(f: &Format, tp: &'static str, name: &'static str, size: u32) -> Result<u32, LayoutError> {
    let field = f.fields.get(name).ok_or(LayoutError::MissingField {
        tracepoint: tp,
        field: name,
    })?;
    if field.size != size {
        return Err(LayoutError::FieldSize {
            tracepoint: tp,
            field: name,
            size: field.size,
            expected: size,
        });
    }
    Ok(field.offset)
}

/// Tracepoint names, as `category/name`.
pub const SOCK_STATE: &str = "sock/inet_sock_set_state";
pub const RETRANSMIT: &str = "tcp/tcp_retransmit_skb";
pub const SEND_RESET: &str = "tcp/tcp_send_reset";
pub const RECV_RESET: &str = "tcp/tcp_receive_reset";

/// Layout of each tracepoint, or why it cannot be used. A tracepoint that fails keeps only its
/// own probe from attaching.
#[derive(Debug)]
pub struct Layouts {
    pub layout: TracepointLayout,
    pub problems: HashMap<&'static str, LayoutError>,
}

/// Builds the layout from the format files found by `read` (`category/name` → file text).
pub fn build(read: impl Fn(&'static str) -> Result<String, LayoutError>) -> Layouts {
    let mut layout = TracepointLayout::DEFAULT;
    let mut problems = HashMap::new();

    let mut apply =
        |tp: &'static str,
         f: &mut dyn FnMut(&Format, &mut TracepointLayout) -> Result<(), LayoutError>| {
            let result = read(tp).and_then(|text| f(&parse_format(&text), &mut layout));
            if let Err(e) = result {
                problems.insert(tp, e);
            }
        };
    apply(SOCK_STATE, &mut |f, l| {
        l.state_skaddr = field(f, SOCK_STATE, "skaddr", 8)?;
        l.state_oldstate = field(f, SOCK_STATE, "oldstate", 4)?;
        l.state_newstate = field(f, SOCK_STATE, "newstate", 4)?;
        l.state_sport = field(f, SOCK_STATE, "sport", 2)?;
        l.state_protocol = field(f, SOCK_STATE, "protocol", 2)?;
        l.state_packed = u32::from(moonfrp_common::SockStateRecord::matches(l));
        Ok(())
    });
    apply(RETRANSMIT, &mut |f, l| {
        l.retrans_sport = field(f, RETRANSMIT, "sport", 2)?;
        Ok(())
    });
    apply(RECV_RESET, &mut |f, l| {
        l.recv_reset_sport = field(f, RECV_RESET, "sport", 2)?;
        Ok(())
    });
    apply(SEND_RESET, &mut |f, l| {
        l.send_reset_skaddr = field(f, SEND_RESET, "skaddr", 8)?;
        // 6.10+: `saddr` is a sockaddr (port big-endian at +2) and `reason` says why.
        // Before: host-order `sport` and no reason; a reset without a socket means "refused".
        if let Ok(saddr) = field(f, SEND_RESET, "saddr", 28) {
            l.send_reset_port = saddr + 2;
            l.send_reset_port_be = 1;
        } else {
            l.send_reset_port = field(f, SEND_RESET, "sport", 2)?;
            l.send_reset_port_be = 0;
        }
        match (
            field(f, SEND_RESET, "reason", 4),
            symbolic_value(&f.print_fmt, "NO_SOCKET"),
        ) {
            (Ok(off), Some(v)) => {
                l.send_reset_reason = off;
                l.reason_no_socket = v;
            }
            _ => l.send_reset_reason = NO_FIELD,
        }
        Ok(())
    });
    Layouts { layout, problems }
}

/// Reads format files under a tracefs mount (`<root>/events/<category>/<name>/format`).
pub fn read_from(root: &Path) -> impl Fn(&'static str) -> Result<String, LayoutError> + '_ {
    move |tp| {
        let path = root.join("events").join(tp).join("format");
        std::fs::read_to_string(&path).map_err(|e| LayoutError::Unreadable {
            tracepoint: tp,
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixtures(kernel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tracefs")
            .join(kernel)
    }

    fn read_fixture(kernel: &'static str) -> impl Fn(&'static str) -> Result<String, LayoutError> {
        move |tp| {
            let path = fixtures(kernel).join(format!("{tp}.format"));
            std::fs::read_to_string(&path).map_err(|e| LayoutError::Unreadable {
                tracepoint: tp,
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
    }

    #[test]
    fn kernel_6_18_matches_compiled_default() {
        let l = build(read_fixture("6.18"));
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.layout, TracepointLayout::DEFAULT);
    }

    #[test]
    fn parses_fields_and_arrays() {
        let text =
            std::fs::read_to_string(fixtures("6.18").join("tcp/tcp_send_reset.format")).unwrap();
        let f = parse_format(&text);
        assert_eq!(f.fields["skbaddr"], Field { offset: 8, size: 8 });
        assert_eq!(
            f.fields["saddr"],
            Field {
                offset: 32,
                size: 28
            }
        );
        assert_eq!(
            f.fields["reason"],
            Field {
                offset: 28,
                size: 4
            }
        );
        assert_eq!(symbolic_value(&f.print_fmt, "NO_SOCKET"), Some(1));
        assert_eq!(symbolic_value(&f.print_fmt, "TCP_STATE"), Some(14));
        assert_eq!(symbolic_value(&f.print_fmt, "NOPE"), None);
    }

    #[test]
    fn pre_6_10_send_reset_falls_back_to_socketless_resets() {
        let read = |tp: &'static str| {
            if tp == SEND_RESET {
                read_fixture("5.15")(tp)
            } else {
                read_fixture("6.18")(tp)
            }
        };
        let l = build(read);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.layout.send_reset_reason, NO_FIELD);
        assert_eq!(l.layout.send_reset_port, 28);
        assert_eq!(l.layout.send_reset_port_be, 0);
        assert_eq!(l.layout.send_reset_skaddr, 16);
    }

    #[test]
    fn a_missing_or_odd_tracepoint_only_affects_itself() {
        let read = |tp: &'static str| match tp {
            RETRANSMIT => Err(LayoutError::Unreadable {
                tracepoint: tp,
                path: "x".into(),
                reason: "gone".into(),
            }),
            RECV_RESET => {
                Ok("format:\n\tfield:__u32 sport;\toffset:16;\tsize:4;\tsigned:0;\n".to_owned())
            }
            _ => read_fixture("6.18")(tp),
        };
        let l = build(read);
        assert_eq!(l.problems.len(), 2, "{:?}", l.problems);
        assert!(matches!(
            l.problems[RECV_RESET],
            LayoutError::FieldSize {
                size: 4,
                expected: 2,
                ..
            }
        ));
        assert!(matches!(
            l.problems[RETRANSMIT],
            LayoutError::Unreadable { .. }
        ));
        assert_eq!(l.layout.state_sport, 24);
    }

    #[test]
    fn sock_state_fields_out_of_their_usual_order_are_read_one_by_one() {
        assert_eq!(build(read_fixture("6.18")).layout.state_packed, 1);
        // A kernel that put something between newstate and sport.
        let read = |tp: &'static str| {
            let text = read_fixture("6.18")(tp)?;
            Ok(if tp == SOCK_STATE {
                text.replace("offset:24;\tsize:2", "offset:26;\tsize:2")
            } else {
                text
            })
        };
        let l = build(read);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.layout.state_sport, 26);
        assert_eq!(l.layout.state_packed, 0);
    }
}
