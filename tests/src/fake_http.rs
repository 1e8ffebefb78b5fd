//! A tiny HTTP/1.1 server standing in for frps's dashboard and frpc's admin API: fixed answers
//! per path (changeable while it runs), HTTP basic auth like frp's, one request per connection.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use base64::Engine as _;

type Routes = Arc<Mutex<HashMap<String, (u16, String)>>>;

/// The server; stops when dropped.
pub struct FakeHttp {
    pub addr: SocketAddr,
    routes: Routes,
    stop: Arc<AtomicBool>,
    /// Requests refused for missing or wrong credentials.
    pub unauthorized: Arc<AtomicU64>,
}

impl FakeHttp {
    /// Listens on a free loopback port; every request needs `user:password`.
    pub fn start(user: &str, password: &str) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Routes = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let unauthorized = Arc::new(AtomicU64::new(0));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let (r, s, u) = (routes.clone(), stop.clone(), unauthorized.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &r, &expected, &u);
                }
            }
        });
        Self {
            addr,
            routes,
            stop,
            unauthorized,
        }
    }

    /// Answers `path` (query string ignored) with `status` and `body` from now on.
    pub fn set(&self, path: &str, status: u16, body: impl Into<String>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body.into()));
    }
}

fn serve(
    stream: TcpStream,
    routes: &Routes,
    expected: &str,
    unauthorized: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut auth_ok = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth_ok = v.trim() == expected;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (status, body) = if auth_ok {
        routes
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or((404, "404 page not found".into()))
    } else {
        unauthorized.fetch_add(1, Ordering::Relaxed);
        (401, String::new())
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}
