//! An HTTP server that misbehaves on purpose, standing in for an frps or frpc web server that a
//! stranger controls: answers that never end, that drip a byte a second, that never come, that
//! are hundreds of megabytes, or that are generated per request (pages of a huge proxy list).
//! One thread per connection, so a hung answer holds up nothing else.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

/// What a route answers.
#[derive(Clone)]
pub enum Behavior {
    /// 200 with this JSON body.
    Json(Arc<String>),
    /// 200 with a body built from the query string (e.g. `page=3&pageSize=200`).
    Generated(Arc<dyn Fn(&str) -> String + Send + Sync>),
    /// 200 with `head`, then `filler` bytes of `b'a'`, then `tail`, streamed in 64 KiB writes
    /// with an honest Content-Length (a 100 MB proxy name, say).
    Huge {
        head: String,
        filler: u64,
        tail: String,
    },
    /// 200, chunked, and the chunks never stop.
    Endless,
    /// 200 with a long Content-Length, then one byte a second.
    Drip,
    /// Reads the request and never answers.
    Hang,
}

/// The server; stops accepting when dropped (connections in progress end with the test).
pub struct HostileHttp {
    pub addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Behavior>>>,
    stop: Arc<AtomicBool>,
    /// Requests received.
    pub requests: Arc<AtomicU64>,
}

impl HostileHttp {
    /// Listens on a free loopback port; every path answers 404 until set.
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Behavior>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (r, s, n) = (routes.clone(), stop.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (r, s, n) = (r.clone(), s.clone(), n.clone());
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let _ = serve(stream, &r, &s, &n);
                    })
                    .unwrap();
            }
        });
        Self {
            addr,
            routes,
            stop,
            requests,
        }
    }

    /// Answers `path` (without the query string) this way from now on.
    pub fn set(&self, path: &str, behavior: Behavior) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), behavior);
    }

    /// Answers `path` with a JSON body.
    pub fn json(&self, path: &str, body: impl Into<String>) {
        self.set(path, Behavior::Json(Arc::new(body.into())));
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for HostileHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn head(out: &mut TcpStream, extra: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}\r\n"
    )
}

fn serve(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Behavior>>,
    stop: &AtomicBool,
    requests: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let behavior = routes.lock().unwrap().get(path).cloned();
    let mut out = stream;
    let Some(behavior) = behavior else {
        let body = "404 page not found";
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    let alive = || !stop.load(Ordering::Relaxed);
    match behavior {
        Behavior::Json(body) => {
            head(&mut out, &format!("Content-Length: {}\r\n", body.len()))?;
            out.write_all(body.as_bytes())
        }
        Behavior::Generated(f) => {
            let body = f(query);
            head(&mut out, &format!("Content-Length: {}\r\n", body.len()))?;
            out.write_all(body.as_bytes())
        }
        Behavior::Huge {
            head: h,
            filler,
            tail,
        } => {
            let len = h.len() as u64 + filler + tail.len() as u64;
            head(&mut out, &format!("Content-Length: {len}\r\n"))?;
            out.write_all(h.as_bytes())?;
            let chunk = vec![b'a'; 64 * 1024];
            let mut left = filler;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                out.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            out.write_all(tail.as_bytes())
        }
        Behavior::Endless => {
            head(&mut out, "Transfer-Encoding: chunked\r\n")?;
            out.write_all(b"6\r\n{\"a\":[\r\n")?;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "1,".repeat(32 * 1024));
            while alive() {
                out.write_all(chunk.as_bytes())?;
            }
            Ok(())
        }
        Behavior::Drip => {
            head(&mut out, "Content-Length: 1000000\r\n")?;
            while alive() {
                out.write_all(b" ")?;
                out.flush()?;
                thread::sleep(Duration::from_secs(1));
            }
            Ok(())
        }
        Behavior::Hang => {
            while alive() {
                thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        }
    }
}
