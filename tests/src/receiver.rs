//! A test HTTP server that records the POSTs it gets (path and body) and answers each path as
//! told: a status, or no answer at all (to stand in for a hung webhook). One thread per
//! connection, so a hung path does not hold up the others.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// How a path answers.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// Reads the request, then says nothing for this long.
    Hang(Duration),
}

/// One request received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub body: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    replies: HashMap<String, Reply>,
    received: Vec<Received>,
}

/// The server; its thread ends with the process (tests are short).
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Listens on a free loopback port; every path answers 200 until told otherwise.
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let s = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &s);
                });
            }
        });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn reply(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .replies
            .insert(path.to_owned(), reply);
    }

    /// Requests received on `path` so far.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut length = 0;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let reply = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            path: path.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            headers,
            at: Instant::now(),
        });
        s.replies.get(&path).copied().unwrap_or(Reply::Status(200))
    };
    let mut stream = stream;
    match reply {
        Reply::Status(code) => write!(
            stream,
            "HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        ),
        Reply::RetryAfter(code, secs) => write!(
            stream,
            "HTTP/1.1 {code} X\r\nretry-after: {secs}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
        ),
        Reply::Hang(d) => {
            thread::sleep(d);
            Ok(())
        }
    }
}
