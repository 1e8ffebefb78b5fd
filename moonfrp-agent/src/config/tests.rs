use super::*;

fn load_str(text: &str, o: &Overrides) -> Result<Config, ConfigError> {
    let file = parse_file(Path::new("/etc/moonfrp/moonfrp.toml"), text)?;
    Config::merge(file, "config file /etc/moonfrp/moonfrp.toml", o)
}

#[test]
fn defaults_without_file_or_flags() {
    let c = Config::load(None, &Overrides::default()).unwrap();
    assert_eq!(c.start.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.interval, DEFAULT_INTERVAL);
    assert_eq!(c.start.log_level, "info");
    assert!(c.tunnels.is_empty());
    assert_eq!(c.start.kernel, KernelConfig::default());
}

#[test]
fn file_and_flags_merge_flags_win() {
    let o = Overrides {
        interval: Some("5s".into()),
        tunnels: vec!["dns=5353/udp".into(), "web=8080".into()],
        ..Overrides::default()
    };
    let c = load_str(
        "listen = \"[::1]:9100\"\ninterval = \"30s\"\n[[tunnels]]\nname = \"ssh\"\nport = 6000\n",
        &o,
    )
    .unwrap();
    assert_eq!(c.start.listen.to_string(), "[::1]:9100");
    assert_eq!(c.interval, Duration::from_secs(5));
    let got: Vec<String> = c.tunnels.iter().map(ToString::to_string).collect();
    assert_eq!(got, ["dns=5353/udp", "ssh=6000/tcp", "web=8080/tcp"]);
    assert_eq!(c.tunnels[1].source, TunnelSource::ConfigFile);
    assert_eq!(c.tunnels[0].source, TunnelSource::Cli);
}

#[test]
fn unknown_key_names_file_and_key() {
    let err = load_str(
        "listen = \"127.0.0.1:1\"\nintervall = \"5s\"\n",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/etc/moonfrp/moonfrp.toml"), "{err}");
    assert!(err.contains("intervall"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn port_out_of_range_in_file_and_flag() {
    let err = load_str(
        "[[tunnels]]\nname = \"x\"\nport = 70000\n",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("tunnels[0] (`x`)") && err.contains("70000"),
        "{err}"
    );
    let o = Overrides {
        tunnels: vec!["x=0".into()],
        ..Overrides::default()
    };
    let err = Config::load(None, &o).unwrap_err().to_string();
    assert!(
        err.starts_with("--tunnel x=0:") && err.contains("1..=65535"),
        "{err}"
    );
}

#[test]
fn duplicate_name_and_port_name_both_places() {
    let o = Overrides {
        tunnels: vec!["ssh=7001".into()],
        ..Overrides::default()
    };
    let err = load_str("[[tunnels]]\nname = \"ssh\"\nport = 6000\n", &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--tunnel ssh=7001") && err.contains("duplicate tunnel name `ssh`"),
        "{err}"
    );
    assert!(err.contains("tunnels[0]"), "{err}");
    let o = Overrides {
        tunnels: vec!["a=6000".into(), "b=6000".into()],
        ..Overrides::default()
    };
    let err = Config::load(None, &o).unwrap_err().to_string();
    assert!(
        err.contains("port 6000/tcp is already watched by --tunnel a=6000"),
        "{err}"
    );
    let o = Overrides {
        tunnels: vec!["a=6000".into(), "b=6000/udp".into()],
        ..Overrides::default()
    };
    assert_eq!(Config::load(None, &o).unwrap().tunnels.len(), 2);
}

#[test]
fn bad_values_are_explained() {
    for (o, needle) in [
        (
            Overrides {
                interval: Some("500ms".into()),
                ..Overrides::default()
            },
            "out of range; use 1s..=1h",
        ),
        (
            Overrides {
                interval: Some("soon".into()),
                ..Overrides::default()
            },
            "not a duration",
        ),
        (
            Overrides {
                listen: Some("localhost".into()),
                ..Overrides::default()
            },
            "not an address:port",
        ),
        (
            Overrides {
                log_level: Some("loud".into()),
                ..Overrides::default()
            },
            "log level `loud`",
        ),
        (
            Overrides {
                tunnels: vec!["ssh".into()],
                ..Overrides::default()
            },
            "expected NAME=PORT",
        ),
        (
            Overrides {
                tunnels: vec!["ssh=22/sctp".into()],
                ..Overrides::default()
            },
            "`sctp`",
        ),
    ] {
        let err = Config::load(None, &o).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should contain {needle}");
    }
}

#[test]
fn unreadable_file_names_path() {
    let err = Config::load(
        Some(Path::new("/nonexistent/moonfrp.toml")),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("/nonexistent/moonfrp.toml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn kernel_sizes_are_checked() {
    let err = load_str("[kernel]\nslots = 0\n", &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("kernel.slots"), "{err}");
    let c = load_str("[kernel]\nslots = 8192\n", &Overrides::default()).unwrap();
    assert_eq!(c.start.kernel.slots, 8192);
    assert_eq!(
        c.start.kernel.tracked_connections,
        moonfrp_common::DEFAULT_TRACKED_CONNECTIONS
    );
}

#[test]
fn history_settings_and_data_dir() {
    let c = Config::load(None, &Overrides::default()).unwrap();
    assert_eq!(c.start.history, HistoryConfig::default());
    assert_eq!(
        c.start.history.db_path(),
        Path::new("/var/lib/moonfrp/history.db")
    );
    let c = load_str(
        "data_dir = \"/srv/moonfrp\"\n[history]\nretention = \"48h\"\nmax_points = 500\n\
         rollups = [{ step = \"5m\", keep = \"2d\" }, { step = \"1h\", keep = \"30d\" }]\n",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.start.history.data_dir, Path::new("/srv/moonfrp"));
    assert_eq!(c.start.history.settings.retention, Duration::from_hours(48));
    assert_eq!(c.start.history.settings.max_points, 500);
    assert_eq!(c.start.history.settings.levels.len(), 2);
    assert_eq!(
        c.start.history.settings.levels[0].step,
        Duration::from_mins(5)
    );
    let o = Overrides {
        data_dir: Some("/tmp/elsewhere".into()),
        ..Overrides::default()
    };
    let c = load_str(
        "data_dir = \"/srv/moonfrp\"\n[history]\nenabled = false\n",
        &o,
    )
    .unwrap();
    assert_eq!(c.start.history.data_dir, Path::new("/tmp/elsewhere"));
    assert!(!c.start.history.enabled);
}

#[test]
fn bad_history_settings_name_the_key() {
    let err = |text: &str| {
        load_str(text, &Overrides::default())
            .unwrap_err()
            .to_string()
    };
    let e = err("[history]\nretention = \"a day\"\n");
    assert!(
        e.contains("key `history.retention`") && e.contains("not a duration"),
        "{e}"
    );
    let e = err("[history]\nrollups = [{ step = \"1h\", keep = \"forever\" }]\n");
    assert!(e.contains("key `history.rollups[0].keep`"), "{e}");
    let e = err(
        "[history]\nrollups = [{ step = \"1h\", keep = \"7d\" }, { step = \"90m\", keep = \"30d\" }]\n",
    );
    assert!(
        e.contains("rollups[1]: step 1h 30m must be a multiple"),
        "{e}"
    );
    let e = err("[history]\nretention = \"30m\"\n");
    assert!(e.contains("longer than the raw retention"), "{e}");
    let e = err("[history]\nkeep = \"1d\"\n");
    assert!(e.contains("unknown field `keep`"), "{e}");
}

#[test]
fn alerts_builtins_can_be_replaced_and_disabled() {
    let c = Config::load(None, &Overrides::default()).unwrap();
    assert!(c.start.alerts.enabled);
    assert_eq!(
        c.start.alerts.rules.len(),
        crate::alerts::rules::builtin().len()
    );
    let c = load_str(
        "[alerts]\ndisable = [\"HostLoadHigh\"]\n\
         [[alerts.rules]]\nname = \"TunnelDown\"\nmetric = \"moonfrp_tunnel_up\"\nop = \"==\"\ncritical = 0\nfor = \"10s\"\n\
         [[alerts.rules]]\nname = \"Busy\"\nmetric = [\"moonfrp_tunnel_receive_bytes_total\", \"moonfrp_tunnel_transmit_bytes_total\"]\n\
         function = \"rate\"\nop = \">\"\nwarning = 1e6\nlabels = { team = \"net\" }\n\
         [[alerts.channels]]\ntype = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/X\"\nseverities = [\"critical\"]\n",
        &Overrides::default(),
    )
    .unwrap();
    let names: Vec<&str> = c
        .start
        .alerts
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert!(!names.contains(&"HostLoadHigh"));
    assert_eq!(names.iter().filter(|n| **n == "TunnelDown").count(), 1);
    let down = c
        .start
        .alerts
        .rules
        .iter()
        .find(|r| r.name == "TunnelDown")
        .unwrap();
    assert_eq!(down.for_, Duration::from_secs(10));
    let busy = c
        .start
        .alerts
        .rules
        .iter()
        .find(|r| r.name == "Busy")
        .unwrap();
    assert_eq!(busy.metrics.len(), 2);
    assert_eq!(
        busy.annotations["summary"],
        "moonfrp_tunnel_receive_bytes_total + moonfrp_tunnel_transmit_bytes_total is {{value}}"
    );
    assert_eq!(c.start.alerts.channels[0].name, "slack-0");
    let e = load_str("[alerts]\ndisable = [\"Nope\"]\n", &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`Nope` is not a built-in rule"), "{e}");
    let e = load_str(
        "[[alerts.rules]]\nname = \"X\"\nmetric = \"moonfrp_tunnel_up\"\nop = \"<\"\n",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("alerts.rules[0] (`X`): give a `warning` or a `critical`"),
        "{e}"
    );
    let e = load_str(
        "[[alerts.channels]]\ntype = \"exec\"\n",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("alerts.channels[0]: an exec channel needs `command"),
        "{e}"
    );
}
