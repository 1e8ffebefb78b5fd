//! Is a tunnel up? Three signals: FRP's own status (frps `status`, frpc `status`/`err`), a
//! listener on the port on this host (the socket table), and connections refused by the kernel
//! since the last interval. A signal that is not available does not vote.
use moonfrp_common::Proto;

/// The verdict for one tunnel, with the reason when it is down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    pub reason: String,
}

/// What is known about one tunnel this interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct Signals<'a> {
    /// FRP's status word and error text, if FRP said anything.
    pub frp_status: Option<&'a str>,
    pub frp_error: Option<&'a str>,
    /// Whether FRP's status means working.
    pub frp_ok: Option<bool>,
    /// The port counted for the tunnel, and whether something listens on it (`None`: unknown).
    pub port: Option<(u16, Proto)>,
    pub listening: Option<bool>,
    /// Connections refused on the port since the last interval.
    pub refused: u64,
}

pub fn evaluate(s: &Signals<'_>) -> Health {
    let down = |reason: String| Health { up: false, reason };
    if s.frp_ok == Some(false) {
        let status = s.frp_status.unwrap_or("not working");
        return down(match s.frp_error.filter(|e| !e.is_empty()) {
            Some(err) => format!("frp: {status}: {err}"),
            None => format!("frp: {status}"),
        });
    }
    if let (Some((port, proto)), Some(false)) = (s.port, s.listening) {
        return down(format!("nothing listens on {port}/{}", proto.as_str()));
    }
    if s.refused > 0 {
        return down(format!(
            "{} connection(s) refused since the last interval",
            s.refused
        ));
    }
    Health {
        up: true,
        reason: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_can_take_a_tunnel_down() {
        let base = Signals {
            port: Some((6000, Proto::Tcp)),
            listening: Some(true),
            ..Signals::default()
        };
        assert!(evaluate(&base).up);
        let offline = Signals {
            frp_ok: Some(false),
            frp_status: Some("offline"),
            ..base
        };
        assert_eq!(evaluate(&offline).reason, "frp: offline");
        let failed = Signals {
            frp_ok: Some(false),
            frp_status: Some("check failed"),
            frp_error: Some("dial tcp: i/o timeout"),
            ..base
        };
        assert_eq!(
            evaluate(&failed).reason,
            "frp: check failed: dial tcp: i/o timeout"
        );
        let closed = Signals {
            listening: Some(false),
            ..base
        };
        assert_eq!(evaluate(&closed).reason, "nothing listens on 6000/tcp");
        let refused = Signals { refused: 3, ..base };
        assert_eq!(
            evaluate(&refused),
            Health {
                up: false,
                reason: "3 connection(s) refused since the last interval".into()
            }
        );
    }

    #[test]
    fn without_frp_the_kernel_signals_decide() {
        let s = Signals {
            frp_ok: None,
            port: Some((7000, Proto::Tcp)),
            listening: Some(true),
            ..Signals::default()
        };
        assert!(evaluate(&s).up);
        let s = Signals {
            frp_ok: Some(true),
            port: None,
            listening: None,
            ..Signals::default()
        };
        assert!(evaluate(&s).up);
    }
}
