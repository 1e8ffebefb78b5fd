//! The Grafana dashboard as a test reads it: its structure checked, its queries with the
//! variables substituted.
use std::collections::BTreeSet;

use serde_json::Value;

/// Every query of `deploy/grafana/moonfrp.json` as (panel title, PromQL) with `$instance`,
/// `$tunnel` and `$__rate_interval` substituted, after structural checks: unique panel ids, one
/// data source variable used everywhere, unique refIds per panel, panels inside the 24-column
/// grid, every variable a query uses defined.
pub fn queries(instance: &str, tunnel: &str) -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::workspace().join("deploy/grafana/moonfrp.json")).unwrap(),
    )
    .unwrap();
    sanity(&dash)
        .into_iter()
        .map(|(title, expr)| {
            let q = expr
                .replace("$__rate_interval", "30s")
                .replace("$instance", instance)
                .replace("$tunnel", tunnel);
            (title, q)
        })
        .collect()
}

/// Structural checks on the dashboard: unique panel ids, one data source variable used
/// everywhere, unique refIds per panel, panels inside the 24-column grid, every variable a
/// query uses defined.
fn sanity(dash: &Value) -> Vec<(String, String)> {
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vars.contains("datasource") && vars.contains("instance") && vars.contains("tunnel"));
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_owned();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title} leaves the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let mut refs = BTreeSet::new();
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId twice"
            );
            let expr = t["expr"].as_str().unwrap().to_owned();
            for word in expr.split('$').skip(1) {
                let name: String = word
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    vars.contains(name.as_str()) || name.starts_with("__"),
                    "{title}: ${name} is not a dashboard variable"
                );
            }
            exprs.push((title.clone(), expr));
        }
    }
    exprs
}
