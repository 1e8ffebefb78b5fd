//! The web page, embedded in the binary (nothing from a CDN, no outside fonts): served at `/`
//! and under `/ui/`, behind the same TLS and basic auth as the API, with a Content-Security-
//! Policy that lets it talk to this agent only.
use std::sync::LazyLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

const INDEX: &[u8] = include_bytes!("../../ui/index.html");
const JS: &str = "text/javascript; charset=utf-8";

/// The page's files under `/ui/`: the entry module, the views it routes to, and what they share.
const FILES: [(&str, &str, &[u8]); 10] = [
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    ("app.js", JS, include_bytes!("../../ui/app.js")),
    ("common.js", JS, include_bytes!("../../ui/common.js")),
    ("chart.js", JS, include_bytes!("../../ui/chart.js")),
    ("panels.js", JS, include_bytes!("../../ui/panels.js")),
    ("overview.js", JS, include_bytes!("../../ui/overview.js")),
    ("tunnel.js", JS, include_bytes!("../../ui/tunnel.js")),
    ("alerts.js", JS, include_bytes!("../../ui/alerts.js")),
    ("host.js", JS, include_bytes!("../../ui/host.js")),
    ("index.html", "text/html; charset=utf-8", INDEX),
];

/// Scripts, styles and requests from this origin only; no frames, no forms elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The files gzipped, once, the first time a browser asks.
static GZIPPED: LazyLock<Vec<Bytes>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(_, _, body)| crate::exposition::compress(body))
        .collect()
});

/// The index in [`FILES`] of the page's file at `path`, if it is one.
fn asset(path: &str) -> Option<usize> {
    let name = match path {
        "/" | "/ui" | "/ui/" => "index.html",
        _ => path.strip_prefix("/ui/")?,
    };
    FILES.iter().position(|(n, ..)| *n == name)
}

/// The answer for `path` if it is the page's (gzipped if the browser takes it).
pub fn serve(path: &str, gzip: bool) -> Option<Response<Full<Bytes>>> {
    let i = asset(path)?;
    let (_, content_type, raw) = FILES[i];
    let body = if gzip {
        GZIPPED[i].clone()
    } else {
        Bytes::from_static(raw)
    };
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::VARY, "accept-encoding");
    if gzip {
        r = r.header(header::CONTENT_ENCODING, "gzip");
    }
    Some(
        r.header(header::CONTENT_SECURITY_POLICY, CSP)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Full::new(body))
            .expect("static response parts are valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_files() {
        let page = std::str::from_utf8(INDEX).unwrap();
        for path in ["/ui/app.js", "/ui/style.css"] {
            assert!(page.contains(path) && asset(path).is_some(), "{path}");
        }
        assert_eq!(asset("/"), asset("/ui/index.html"));
        assert_eq!(asset("/ui/../Cargo.toml"), None);
        for (name, _, body) in FILES {
            let text = std::str::from_utf8(body).unwrap();
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!text.contains(needle), "{name} mentions {needle}");
            }
            for needle in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(
                    !text.contains(needle),
                    "{name}: names must go in as text ({needle})"
                );
            }
            // Every module a file imports is one of the page's own.
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let from = line.rsplit("\"./").next().unwrap().trim_end_matches("\";");
                assert!(asset(&format!("/ui/{from}")).is_some(), "{name}: {line}");
            }
        }
    }

    #[test]
    fn the_page_weighs_less_than_250_kb_gzipped() {
        let raw: usize = FILES.iter().map(|(_, _, b)| b.len()).sum();
        let gzipped: usize = GZIPPED.iter().map(Bytes::len).sum();
        eprintln!("page: {raw} bytes, {gzipped} gzipped");
        assert!(gzipped <= 250_000, "{gzipped} bytes gzipped");
        let r = serve("/ui/chart.js", true).unwrap();
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(
            serve("/ui/chart.js", false)
                .unwrap()
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_none()
        );
    }
}
