//! `moonfrp-agent top`: a live full-screen view (ratatui). The tunnel table sorts by bandwidth,
//! connections, errors or name; each tunnel has a sparkline of its last hour (from history);
//! CPU and memory gauges; the active alerts. Usable at 80×24 over SSH; `q` restores the terminal.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use clap::Args;
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Gauge, Paragraph, Row, Table, Wrap},
};

use super::{ClientArgs, FetchError, bytes, fetch_status, fit, ibytes};
use crate::{
    api::{status::Status, tunnels::TunnelRow},
    frp::client::Endpoint,
};

#[derive(Clone, Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How often to refresh (+ and - change it while running).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Bandwidth,
    Connections,
    Errors,
    Name,
}

impl Sort {
    const fn label(self) -> &'static str {
        match self {
            Self::Bandwidth => "bandwidth",
            Self::Connections => "connections",
            Self::Errors => "errors",
            Self::Name => "name",
        }
    }
}

/// What the screen shows.
pub struct App {
    pub addr: String,
    pub status: Result<Status, FetchError>,
    pub sort: Sort,
    pub refresh: Duration,
    /// Per tunnel: bytes per second (in + out), one value a minute over the last hour.
    pub sparks: HashMap<String, Vec<f64>>,
    /// Row under the cursor (↑/↓), in the sorted table.
    pub selected: usize,
    /// The peers view of a tunnel (Enter opens, Enter or Esc closes): its name and the API's
    /// answer.
    pub peers: Option<(String, serde_json::Value)>,
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A text sparkline of the last `width` values, scaled to their maximum.
pub fn sparkline(values: &[f64], width: usize) -> String {
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().fold(0.0, f64::max);
    tail.iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let i = ((v / max) * 7.0).round() as usize;
                BARS[i.min(7)]
            }
        })
        .collect()
}

fn sorted(s: &Status, sort: Sort) -> Vec<&TunnelRow> {
    let mut rows: Vec<_> = s.tunnels.iter().collect();
    match sort {
        Sort::Bandwidth => rows.sort_by(|a, b| {
            b.bandwidth()
                .total_cmp(&a.bandwidth())
                .then(a.tunnel.cmp(&b.tunnel))
        }),
        Sort::Connections => rows.sort_by(|a, b| {
            b.connections_active
                .unwrap_or(0)
                .cmp(&a.connections_active.unwrap_or(0))
                .then(a.tunnel.cmp(&b.tunnel))
        }),
        Sort::Errors => rows.sort_by(|a, b| {
            (b.errors_total() + b.connections_refused_total.unwrap_or(0))
                .cmp(&(a.errors_total() + a.connections_refused_total.unwrap_or(0)))
                .then(a.tunnel.cmp(&b.tunnel))
        }),
        Sort::Name => rows.sort_by(|a, b| a.tunnel.cmp(&b.tunnel)),
    }
    rows
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{}/s", bytes(v)))
}

/// Draws one frame.
pub fn render(f: &mut Frame<'_>, app: &App) {
    let area = f.area();
    let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let header = format!(
        " moonfrp top · {} · every {} · sort: {} · b/c/e/n sort, ↑↓ Enter peers, +/- refresh, q quit",
        app.addr,
        humantime::format_duration(app.refresh),
        app.sort.label()
    );
    f.render_widget(
        Paragraph::new(fit(&header, usize::from(area.width)))
            .style(Style::new().add_modifier(Modifier::REVERSED)),
        head,
    );
    let s = match &app.status {
        Ok(s) => s,
        Err(e) => {
            f.render_widget(
                Paragraph::new(e.to_string())
                    .wrap(Wrap { trim: true })
                    .block(Block::bordered().title(" waiting for the agent ")),
                body,
            );
            return;
        }
    };
    let alert_lines = u16::try_from(s.alerts.len().clamp(1, 4)).unwrap_or(4) + 2;
    let groups = s.services.len() + s.containers.len();
    let service_lines = if groups == 0 {
        0
    } else {
        u16::try_from(groups.min(6)).unwrap_or(6) + 3
    };
    let [gauges, table, services, alerts] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length(service_lines),
        Constraint::Length(alert_lines),
    ])
    .areas(body);
    render_gauges(f, s, gauges);
    if groups > 0 {
        render_services(f, s, services);
    }
    if let Some((name, d)) = &app.peers {
        render_peers(f, name, d, table);
    } else {
        render_tunnels(f, app, s, table);
    }
    let lines: Vec<Line<'_>> = if s.alerts.is_empty() {
        vec![Line::from("none active")]
    } else {
        s.alerts
            .iter()
            .map(|a| {
                let color = if a.severity == "critical" {
                    Color::Red
                } else {
                    Color::Yellow
                };
                Line::styled(
                    fit(
                        &format!(
                            "{:<8} {} ({}): {}",
                            a.severity, a.alertname, a.state, a.summary
                        ),
                        usize::from(alerts.width.saturating_sub(2)),
                    ),
                    Style::new().fg(color),
                )
            })
            .collect()
    };
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(" alerts ({}) ", s.alerts.len()))),
        alerts,
    );
}

fn render_gauges(f: &mut Frame<'_>, s: &Status, area: Rect) {
    let [cpu, mem] =
        Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(area);
    let y = &s.system;
    let cpu_ratio = y.cpu_usage_ratio.unwrap_or(0.0).clamp(0.0, 1.0);
    f.render_widget(
        Gauge::default()
            .block(Block::bordered().title(format!(
                " cpu · load {} ",
                y.load1.map_or_else(|| "-".into(), |l| format!("{l:.2}"))
            )))
            .gauge_style(Style::new().fg(Color::Cyan))
            .ratio(cpu_ratio)
            .label(
                y.cpu_usage_ratio
                    .map_or_else(|| "-".into(), |r| format!("{:.1} %", r * 100.0)),
            ),
        cpu,
    );
    let (used, total) = (
        y.memory_used_bytes.unwrap_or(0),
        y.memory_total_bytes.unwrap_or(0),
    );
    #[allow(clippy::cast_precision_loss)]
    let ratio = if total == 0 {
        0.0
    } else {
        used as f64 / total as f64
    };
    f.render_widget(
        Gauge::default()
            .block(Block::bordered().title(" memory "))
            .gauge_style(Style::new().fg(Color::Magenta))
            .ratio(ratio.clamp(0.0, 1.0))
            .label(format!("{} of {}", ibytes(used), ibytes(total))),
        mem,
    );
}

fn render_tunnels(f: &mut Frame<'_>, app: &App, s: &Status, area: Rect) {
    let wide = area.width >= 110;
    let spark_width = 30;
    let mut header = vec!["TUNNEL", "PORT", "STATE", "IN", "OUT", "CONNS", "ERRORS"];
    let mut widths = vec![
        Constraint::Min(12),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(11),
        Constraint::Length(11),
        Constraint::Length(6),
        Constraint::Length(7),
    ];
    if wide {
        header.push("LAST HOUR");
        widths.push(Constraint::Length(spark_width));
    }
    let selected = app.selected.min(s.tunnels.len().saturating_sub(1));
    let rows: Vec<Row<'_>> = sorted(s, app.sort)
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut cells = vec![
                Cell::from(t.tunnel.clone()),
                Cell::from(
                    t.port
                        .map_or_else(|| format!("-/{}", t.kind), |p| format!("{p}/{}", t.proto)),
                ),
                Cell::from(if t.up { "up" } else { "DOWN" }).style(Style::new().fg(if t.up {
                    Color::Green
                } else {
                    Color::Red
                })),
                Cell::from(rate(t.receive_bytes_per_second)),
                Cell::from(rate(t.transmit_bytes_per_second)),
                Cell::from(
                    t.connections_active
                        .map_or_else(|| "-".into(), |c| c.to_string()),
                ),
                Cell::from(
                    (t.errors_total() + t.connections_refused_total.unwrap_or(0)).to_string(),
                ),
            ];
            if wide {
                cells.push(Cell::from(
                    app.sparks
                        .get(&t.tunnel)
                        .map(|v| sparkline(v, usize::from(spark_width)))
                        .unwrap_or_default(),
                ));
            }
            let row = Row::new(cells);
            if i == selected {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let title = if s.tunnels.is_empty() {
        " tunnels: none watched ".to_owned()
    } else {
        format!(" tunnels ({}) ", s.tunnels.len())
    };
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
            .block(Block::bordered().title(title)),
        area,
    );
}

/// Units and containers, the busiest first.
fn render_services(f: &mut Frame<'_>, s: &Status, area: Rect) {
    let mut groups: Vec<(&str, &str, &crate::api::status::Resources)> = s
        .services
        .iter()
        .map(|u| (u.unit.as_str(), "service", &u.resources))
        .chain(
            s.containers
                .iter()
                .map(|c| (c.container.as_str(), "container", &c.resources)),
        )
        .collect();
    groups.sort_by(|a, b| {
        b.2.cpu_cores
            .unwrap_or(0.0)
            .total_cmp(&a.2.cpu_cores.unwrap_or(0.0))
            .then_with(|| a.0.cmp(b.0))
    });
    let rows: Vec<Row<'_>> = groups
        .iter()
        .map(|(name, kind, r)| {
            Row::new([
                Cell::from(fit(name, 40)),
                Cell::from(*kind),
                Cell::from(
                    r.cpu_cores
                        .map_or_else(|| "-".into(), |c| format!("{:.1} %", c * 100.0)),
                ),
                Cell::from(r.memory_bytes.map_or_else(|| "-".into(), ibytes)),
                Cell::from(r.pids.map_or_else(|| "-".into(), |p| p.to_string())),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(16),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(5),
            ],
        )
        .header(
            Row::new(["SERVICE / CONTAINER", "KIND", "CPU", "MEMORY", "PIDS"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(format!(
            " services ({}) · containers ({}) ",
            s.services.len(),
            s.containers.len()
        ))),
        area,
    );
}

fn render_peers(f: &mut Frame<'_>, name: &str, d: &serde_json::Value, area: Rect) {
    let header = Row::new(["PEER", "IN", "OUT", "PACKETS", "SYNS"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows: Vec<Row<'_>> = d["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            #[allow(clippy::cast_precision_loss)]
            let b = |k: &str| bytes(n(k) as f64);
            Row::new([
                p["address"].as_str().unwrap_or("?").to_owned(),
                b("receive_bytes"),
                b("transmit_bytes"),
                n("packets").to_string(),
                n("connection_attempts").to_string(),
            ])
        })
        .collect();
    let title = format!(
        " peers of {name} ({} of {}) · Enter/Esc back ",
        rows.len(),
        d["peers_total"].as_u64().unwrap_or(0)
    );
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(16),
                Constraint::Length(11),
                Constraint::Length(11),
                Constraint::Length(9),
                Constraint::Length(6),
            ],
        )
        .header(header)
        .block(Block::bordered().title(title)),
        area,
    );
}

/// Bytes per second (in + out) per tunnel over the last hour, a value a minute, from history.
fn fetch_sparks(rt: &tokio::runtime::Runtime, ep: &Endpoint) -> HashMap<String, Vec<f64>> {
    let mut out: HashMap<String, Vec<f64>> = HashMap::new();
    for metric in [
        "moonfrp_tunnel_receive_bytes_total",
        "moonfrp_tunnel_transmit_bytes_total",
    ] {
        let path = format!("/api/v1/history?metric={metric}&since=1h&step=1m&rate=true");
        let Ok((200, body)) = super::get(rt, ep, &path) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        for s in v["data"]["series"].as_array().into_iter().flatten() {
            let name = s["labels"]["tunnel"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let values: Vec<f64> = s["samples"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[1].as_f64())
                .collect();
            let e = out.entry(name).or_default();
            if e.len() < values.len() {
                e.resize(values.len(), 0.0);
            }
            let offset = e.len() - values.len();
            for (i, x) in values.iter().enumerate() {
                e[offset + i] += x;
            }
        }
    }
    out
}

/// The peers of a tunnel from the API (None when it cannot say).
fn fetch_peers(
    rt: &tokio::runtime::Runtime,
    ep: &Endpoint,
    name: &str,
) -> Option<serde_json::Value> {
    let name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let (code, body) =
        super::get(rt, ep, &format!("/api/v1/tunnels/{name}/peers?limit=50")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| v["data"].clone())
}

/// Runs the view until `q`; the terminal is restored on the way out (and on a panic).
pub fn run(args: &TopArgs) -> Result<(), String> {
    let ep = args.client.endpoint()?;
    let rt = super::runtime()?;
    let mut app = App {
        addr: ep.addr.clone(),
        status: Err(FetchError::NoSnapshot),
        sort: Sort::Bandwidth,
        refresh: args.refresh.max(Duration::from_millis(500)),
        sparks: HashMap::new(),
        selected: 0,
        peers: None,
    };
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        let mut sparks_at: Option<Instant> = None;
        loop {
            app.status = fetch_status(&rt, &ep);
            if let Some((name, _)) = &app.peers {
                app.peers = fetch_peers(&rt, &ep, name).map(|d| (name.clone(), d));
            }
            if app.status.is_ok()
                && sparks_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
            {
                app.sparks = fetch_sparks(&rt, &ep);
                sparks_at = Some(Instant::now());
            }
            let next = Instant::now() + app.refresh;
            loop {
                terminal.draw(|f| render(f, &app))?;
                let wait = next.saturating_duration_since(Instant::now());
                if wait.is_zero() || !event::poll(wait)? {
                    break;
                }
                match event::read()? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => match k.code {
                        KeyCode::Enter | KeyCode::Esc if app.peers.is_some() => app.peers = None,
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Up => app.selected = app.selected.saturating_sub(1),
                        KeyCode::Down => app.selected += 1,
                        KeyCode::Enter => {
                            let name = app.status.as_ref().ok().and_then(|s| {
                                let rows = sorted(s, app.sort);
                                rows.get(app.selected.min(rows.len().saturating_sub(1)))
                                    .map(|t| t.tunnel.clone())
                            });
                            if let Some(name) = name {
                                app.peers = fetch_peers(&rt, &ep, &name).map(|d| (name, d));
                            }
                        }
                        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                            return Ok(());
                        }
                        KeyCode::Char('b') => app.sort = Sort::Bandwidth,
                        KeyCode::Char('c') => app.sort = Sort::Connections,
                        KeyCode::Char('e') => app.sort = Sort::Errors,
                        KeyCode::Char('n') => app.sort = Sort::Name,
                        // + refreshes more often, - less.
                        KeyCode::Char('+') => {
                            app.refresh = (app.refresh / 2).max(Duration::from_millis(500));
                        }
                        KeyCode::Char('-') => {
                            app.refresh = (app.refresh * 2).min(Duration::from_mins(1));
                        }
                        _ => {}
                    },
                    // A resize (or anything else) redraws.
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result.map_err(|e| format!("terminal: {e}"))
}
