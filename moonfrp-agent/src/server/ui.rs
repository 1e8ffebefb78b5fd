//! The web page, embedded in the binary (nothing from a CDN, no outside fonts): served at `/`
//! and under `/ui/`, behind the same TLS and basic auth as the API, with a Content-Security-
//! Policy that lets it talk to this agent only.
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

const INDEX: &[u8] = include_bytes!("../../ui/index.html");
const APP: &[u8] = include_bytes!("../../ui/app.js");
const STYLE: &[u8] = include_bytes!("../../ui/style.css");

/// Scripts, styles and requests from this origin only; no frames, no forms elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's file at `path`, if it is one: (content type, bytes).
fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/ui" | "/ui/" | "/ui/index.html" => Some(("text/html; charset=utf-8", INDEX)),
        "/ui/app.js" => Some(("text/javascript; charset=utf-8", APP)),
        "/ui/style.css" => Some(("text/css; charset=utf-8", STYLE)),
        _ => None,
    }
}

/// The answer for `path` if it is the page's.
pub fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body) = asset(path)?;
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_SECURITY_POLICY, CSP)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Full::new(Bytes::from_static(body)))
            .expect("static response parts are valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_its_own_files() {
        let page = std::str::from_utf8(INDEX).unwrap();
        for needle in ["http://", "https://", "//cdn", "@import"] {
            assert!(!page.contains(needle), "index.html mentions {needle}");
        }
        for path in ["/ui/app.js", "/ui/style.css"] {
            assert!(page.contains(path) && asset(path).is_some(), "{path}");
        }
        let app = std::str::from_utf8(APP).unwrap();
        assert!(!app.contains("innerHTML"), "names must go in as text");
        assert!(
            !app.contains("http"),
            "the page talks to its own origin only"
        );
    }
}
