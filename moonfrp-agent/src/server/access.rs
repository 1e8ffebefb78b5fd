//! Who may do what: basic auth against the web config's bcrypt hashes, and the rule for the
//! write endpoints (an authenticated client, or a loopback peer when nothing authenticates).
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use hyper::{HeaderMap, header};
use tokio::sync::Semaphore;

use super::web_config::Web;

/// bcrypt runs at once (each takes tens of milliseconds of CPU by design): a flood of wrong
/// passwords waits here instead of taking every core from collection.
static BCRYPT_RUNS: Semaphore = Semaphore::const_new(2);

/// Most remembered passwords per web config version (cleared when full).
const MAX_VERIFIED: usize = 256;

/// A hash of a random password, verified against when the user is unknown so that an unknown
/// user takes as long as a wrong password (no user enumeration by timing). Cost 10, what
/// `htpasswd -B` and the exporter-toolkit's docs use.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut random = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    bcrypt::hash(random, 10).unwrap_or_default()
});

/// SHA-256 of `user`, `password` and the stored hash that matched them: a later request with
/// the same credentials is let in without a bcrypt run, and the password itself is not kept.
#[derive(Default)]
pub struct Verified(Mutex<HashSet<[u8; 32]>>);

impl Verified {
    fn key(user: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [user, password, hash] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.len() >= MAX_VERIFIED {
            set.clear();
        }
        set.insert(key);
    }
}

/// Who sent a request.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client proved who it is: basic auth passed, or a verified client certificate
    /// under `RequireAndVerifyClientCert`.
    pub authenticated: bool,
}

impl Peer {
    /// On this host: 127.0.0.0/8, ::1, or ::ffff:127.x.
    pub fn is_loopback(&self) -> bool {
        match self.addr.ip() {
            IpAddr::V4(a) => a.is_loopback(),
            IpAddr::V6(a) => {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        }
    }

    /// May change the agent's state (start or stop an inspection): an authenticated client,
    /// or, when the web config authenticates nobody, a peer on this host.
    pub fn may_write(&self, web: &Web) -> bool {
        if web.authenticates() {
            self.authenticated
        } else {
            self.is_loopback()
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Basic` header, or not decodable.
    Missing,
    /// An unknown user or a wrong password.
    Wrong,
}

/// `(user, password)` of an `Authorization: Basic` header.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Checks basic auth when the web config has users; `Ok` when the request may go on.
pub async fn check(web: &Arc<Web>, headers: &HeaderMap) -> Result<(), Refusal> {
    if web.users.is_empty() {
        return Ok(());
    }
    let (user, password) = basic_credentials(headers).ok_or(Refusal::Missing)?;
    let (hash, known) = match web.users.get(&user) {
        Some(h) => (h.clone(), true),
        None => (DUMMY_HASH.clone(), false),
    };
    let key = Verified::key(&user, &password, &hash);
    if known && web.verified.contains(&key) {
        return Ok(());
    }
    let Ok(_run) = BCRYPT_RUNS.acquire().await else {
        return Err(Refusal::Wrong);
    };
    let matched = tokio::task::spawn_blocking(move || bcrypt::verify(&password, &hash))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
    if known && matched {
        web.verified.insert(key);
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn credentials_are_parsed_from_basic_only() {
        let token = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            basic_credentials(&headers(&format!("Basic {token}"))),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials(&headers(&format!("Bearer {token}"))),
            None
        );
        assert_eq!(basic_credentials(&headers("Basic !!!")), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn the_dummy_hash_is_a_valid_hash_that_matches_nothing_usual() {
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
        assert!(!bcrypt::verify("", &DUMMY_HASH).unwrap());
    }

    #[test]
    fn loopback_peers() {
        let p = |a: &str| Peer {
            addr: a.parse().unwrap(),
            authenticated: false,
        };
        assert!(p("127.0.0.1:1").is_loopback());
        assert!(p("127.9.0.1:1").is_loopback());
        assert!(p("[::1]:1").is_loopback());
        assert!(p("[::ffff:127.0.0.1]:1").is_loopback());
        assert!(!p("10.0.0.1:1").is_loopback());
        assert!(!p("[::ffff:10.0.0.1]:1").is_loopback());
        let open = Web::open();
        assert!(p("127.0.0.1:1").may_write(&open));
        assert!(!p("10.0.0.1:1").may_write(&open));
    }
}
