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
        "{tracepoint}: no drop reasons on this kernel (before 5.17): refused connections are not counted (from 6.10 on they come from tcp_send_reset)"
    )]
    NoDropReason { tracepoint: &'static str },
    #[error(
        "{tracepoint}: cannot read struct sk_buff from the kernel's BTF ({path}): {reason} (refused connections are not counted; kernels 5.17–6.9 need CONFIG_DEBUG_INFO_BTF for them)"
    )]
    Btf {
        tracepoint: &'static str,
        path: String,
        reason: String,
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
/// Only on kernels whose `tcp_send_reset` has no reason (before 6.10): refused connections.
pub const DROP: &str = "skb/kfree_skb";

/// Where the running kernel's BTF is.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Layout of each tracepoint, or why it cannot be used. A tracepoint that fails keeps only its
/// own probe from attaching.
#[derive(Debug)]
pub struct Layouts {
    pub layout: TracepointLayout,
    pub problems: HashMap<&'static str, LayoutError>,
    /// What works, but less well than it could (for the log).
    pub notes: Vec<String>,
}

impl Layouts {
    /// `tcp_send_reset` cannot tell a refused connection (kernels before 6.10): the [`DROP`]
    /// tracepoint is needed for them. Otherwise it is not used at all.
    pub fn refused_from_drops(&self) -> bool {
        self.layout.send_reset_reason == NO_FIELD
    }

    /// Whether the probe on tracepoint `tp` has a job on this kernel.
    pub fn needed(&self, tp: &str) -> bool {
        tp != DROP || self.refused_from_drops()
    }
}

/// Builds the layout from the format files found by `read` (`category/name` → file text) and,
/// where the [`DROP`] tracepoint is needed, `sk_buff`'s offsets from the BTF `btf` reads.
pub fn build(
    read: impl Fn(&'static str) -> Result<String, LayoutError>,
    btf: impl FnOnce() -> Result<Vec<u8>, std::io::Error>,
) -> Layouts {
    let mut layout = TracepointLayout::DEFAULT;
    let mut problems = HashMap::new();

    let mut apply =
        |layout: &mut TracepointLayout,
         tp: &'static str,
         f: &mut dyn FnMut(&Format, &mut TracepointLayout) -> Result<(), LayoutError>| {
            let result = read(tp).and_then(|text| f(&parse_format(&text), layout));
            if let Err(e) = result {
                problems.insert(tp, e);
            }
        };
    apply(&mut layout, SOCK_STATE, &mut |f, l| {
        l.state_skaddr = field(f, SOCK_STATE, "skaddr", 8)?;
        l.state_oldstate = field(f, SOCK_STATE, "oldstate", 4)?;
        l.state_newstate = field(f, SOCK_STATE, "newstate", 4)?;
        l.state_sport = field(f, SOCK_STATE, "sport", 2)?;
        l.state_protocol = field(f, SOCK_STATE, "protocol", 2)?;
        l.state_packed = u32::from(moonfrp_common::SockStateRecord::matches(l));
        Ok(())
    });
    apply(&mut layout, RETRANSMIT, &mut |f, l| {
        l.retrans_sport = field(f, RETRANSMIT, "sport", 2)?;
        Ok(())
    });
    apply(&mut layout, RECV_RESET, &mut |f, l| {
        l.recv_reset_sport = field(f, RECV_RESET, "sport", 2)?;
        Ok(())
    });
    apply(&mut layout, SEND_RESET, &mut |f, l| {
        // 6.10+: `saddr` is a sockaddr (port big-endian at +2) and `reason` says why (a reset
        // sent with no socket answers a port nobody has). Before: host-order `sport`, no reason,
        // and the tracepoint fires only for resets a socket sends.
        if let Ok(saddr) = field(f, SEND_RESET, "saddr", 28) {
            l.send_reset_port = saddr + 2;
            l.send_reset_port_be = 1;
        } else {
            l.send_reset_port = field(f, SEND_RESET, "sport", 2)?;
            l.send_reset_port_be = 0;
        }
        if let (Ok(off), Some(v)) = (
            field(f, SEND_RESET, "reason", 4),
            symbolic_value(&f.print_fmt, "NO_SOCKET"),
        ) {
            l.send_reset_reason = off;
            l.reason_no_socket = v;
            l.send_reset_skbaddr = field(f, SEND_RESET, "skbaddr", 8).unwrap_or(NO_FIELD);
        } else {
            l.send_reset_reason = NO_FIELD;
            l.send_reset_skbaddr = NO_FIELD;
        }
        Ok(())
    });
    let refused_from_drops = layout.send_reset_reason == NO_FIELD;
    if refused_from_drops {
        apply(&mut layout, DROP, &mut |f, l| {
            l.drop_skbaddr = field(f, DROP, "skbaddr", 8)?;
            l.drop_reason = field(f, DROP, "reason", 4).map_err(|e| match e {
                LayoutError::MissingField { .. } => LayoutError::NoDropReason { tracepoint: DROP },
                other => other,
            })?;
            l.drop_no_socket = symbolic_value(&f.print_fmt, "NO_SOCKET")
                .ok_or(LayoutError::NoDropReason { tracepoint: DROP })?;
            Ok(())
        });
    }
    let notes = skb_offsets(&mut layout, &mut problems, btf);
    Layouts {
        layout,
        problems,
        notes,
    }
}

/// Fills in `sk_buff`'s offsets from the BTF where a probe uses them: before 6.10 the DROP probe
/// cannot work without them (a problem of its own); from 6.10 on they let `tcp_send_reset` tell
/// a refused SYN from a stray segment (without them, a note). What to log.
fn skb_offsets(
    layout: &mut TracepointLayout,
    problems: &mut HashMap<&'static str, LayoutError>,
    btf: impl FnOnce() -> Result<Vec<u8>, std::io::Error>,
) -> Vec<String> {
    let refused_from_drops = layout.send_reset_reason == NO_FIELD;
    let wanted = if refused_from_drops {
        !problems.contains_key(DROP)
    } else {
        !problems.contains_key(SEND_RESET) && layout.send_reset_skbaddr != NO_FIELD
    };
    if !wanted {
        if !refused_from_drops {
            layout.skb_head = NO_FIELD;
        }
        return Vec::new();
    }
    let skb = btf().map_err(|e| e.to_string()).and_then(|data| {
        super::btf::offsets(
            &data,
            "sk_buff",
            &[("head", 8), ("network_header", 2), ("transport_header", 2)],
        )
        .map_err(|e| e.to_string())
    });
    match skb {
        Ok(off) => {
            layout.skb_head = off[0];
            layout.skb_network_header = off[1];
            layout.skb_transport_header = off[2];
            Vec::new()
        }
        Err(reason) if refused_from_drops => {
            problems.insert(
                DROP,
                LayoutError::Btf {
                    tracepoint: DROP,
                    path: VMLINUX_BTF.to_owned(),
                    reason,
                },
            );
            Vec::new()
        }
        Err(reason) => {
            layout.skb_head = NO_FIELD;
            vec![format!(
                "{SEND_RESET}: cannot read sk_buff's layout from {VMLINUX_BTF} ({reason}): a reset \
                 answering a stray segment on a port nobody has counts as a refused connection"
            )]
        }
    }
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

    /// The BTF reader for a kernel that must not need it.
    fn no_btf() -> Result<Vec<u8>, std::io::Error> {
        panic!("this kernel's layout needs no BTF")
    }

    fn host_btf() -> Result<Vec<u8>, std::io::Error> {
        std::fs::read(VMLINUX_BTF)
    }

    /// BTF that cannot be read.
    fn missing_btf() -> Result<Vec<u8>, std::io::Error> {
        Err(std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    #[test]
    fn kernel_6_18_matches_compiled_default() {
        let l = build(read_fixture("6.18"), host_btf);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert!(l.notes.is_empty(), "{:?}", l.notes);
        assert!(!l.refused_from_drops() && !l.needed(DROP) && l.needed(SEND_RESET));
        // The drop fields are only filled where needed; the default carries 6.18's values.
        let mut with_drops = l.layout;
        let f = parse_format(&read_fixture("6.18")(DROP).unwrap());
        with_drops.drop_skbaddr = f.fields["skbaddr"].offset;
        with_drops.drop_reason = f.fields["reason"].offset;
        with_drops.drop_no_socket = symbolic_value(&f.print_fmt, "NO_SOCKET").unwrap();
        assert_eq!(with_drops, TracepointLayout::DEFAULT);
    }

    #[test]
    fn from_6_10_without_btf_every_reset_with_no_socket_is_a_refusal() {
        let l = build(read_fixture("6.18"), missing_btf);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.layout.skb_head, NO_FIELD);
        assert_eq!(l.layout.send_reset_skbaddr, 8);
        assert_eq!(l.notes.len(), 1);
        assert!(
            l.notes[0].contains("/sys/kernel/btf/vmlinux") && l.notes[0].contains("stray segment"),
            "{}",
            l.notes[0]
        );
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
    fn before_6_10_refusals_come_from_dropped_syns_with_btf_offsets() {
        let l = build(read_fixture("6.1"), host_btf);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert!(l.refused_from_drops() && l.needed(DROP));
        assert_eq!(l.layout.send_reset_reason, NO_FIELD);
        assert_eq!(l.layout.send_reset_port, 28);
        assert_eq!(l.layout.send_reset_port_be, 0);
        assert_eq!(
            (
                l.layout.drop_skbaddr,
                l.layout.drop_reason,
                l.layout.drop_no_socket
            ),
            (8, 28, 2)
        );
        assert!(l.layout.skb_head > 0 && l.layout.skb_transport_header > 0);
    }

    #[test]
    fn before_6_10_without_btf_or_drop_reasons_only_refusals_go() {
        let unreadable = || Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        let l = build(read_fixture("6.1"), unreadable);
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);
        let why = l.problems[DROP].to_string();
        assert!(
            why.contains("/sys/kernel/btf/vmlinux") && why.contains("refused"),
            "{why}"
        );
        // Debian 11's 5.10: `kfree_skb` without a reason.
        let l = build(read_fixture("5.10"), no_btf);
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);
        assert_eq!(
            l.problems[DROP],
            LayoutError::NoDropReason { tracepoint: DROP }
        );
        assert!(l.problems[DROP].to_string().contains("before 5.17"));
        assert_eq!(
            l.layout.send_reset_port, 28,
            "the other probes keep their layout"
        );
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
        let l = build(read, host_btf);
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
        assert_eq!(build(read_fixture("6.18"), host_btf).layout.state_packed, 1);
        // A kernel that put something between newstate and sport.
        let read = |tp: &'static str| {
            let text = read_fixture("6.18")(tp)?;
            Ok(if tp == SOCK_STATE {
                text.replace("offset:24;\tsize:2", "offset:26;\tsize:2")
            } else {
                text
            })
        };
        let l = build(read, host_btf);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(l.layout.state_sport, 26);
        assert_eq!(l.layout.state_packed, 0);
    }
}
