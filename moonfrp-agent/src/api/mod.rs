//! The JSON API, one file per resource: `history` (`/api/v1/history`, `/api/v1/summary`),
//! `tunnels`, `status`, `peers`, `inspect`, `alerts` and `logs`. Answers are typed structs that the
//! server writes and the clients (`status`, `top`, `inspect`, `history`) read. Handlers run on
//! the blocking pool (they read SQLite or the kernel), never on the collection thread.
pub mod alerts;
pub mod history;
pub mod inspect;
pub mod logs;
pub mod peers;
pub mod status;
pub mod tunnels;

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use crate::history::{Settings, query::QueryError, store::open_read_only};

/// Where the history database is, for readers.
#[derive(Clone, Debug)]
pub struct HistoryApi {
    pub db: PathBuf,
    pub settings: Settings,
    /// Refused and errors per tunnel over the last hour, and when they were read: `status` is
    /// asked every second by the web page and `top`, the hour moves slowly (see `last_hour`).
    pub(crate) last_hour: std::sync::Arc<std::sync::Mutex<Option<history::LastHour>>>,
    /// A read-only connection kept between queries, with the file it was opened on: its warm
    /// page cache spares the next query reading again the pages it touches (a quarter of the
    /// summary's time at 1,000 tunnels).
    idle: std::sync::Arc<std::sync::Mutex<Option<(rusqlite::Connection, FileId)>>>,
}

/// A file's device and inode: a connection to a file that was since moved aside (damaged) is not
/// used again.
type FileId = (u64, u64);

fn file_id(path: &std::path::Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A connection taken from [`HistoryApi`]; it goes back when dropped.
pub(crate) struct Pooled<'a> {
    conn: Option<(rusqlite::Connection, FileId)>,
    home: &'a std::sync::Mutex<Option<(rusqlite::Connection, FileId)>>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = rusqlite::Connection;

    fn deref(&self) -> &rusqlite::Connection {
        &self.conn.as_ref().expect("held until dropped").0
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            *self
                .home
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
        }
    }
}

impl HistoryApi {
    pub fn new(db: PathBuf, settings: Settings) -> Self {
        Self {
            db,
            settings,
            last_hour: std::sync::Arc::default(),
            idle: std::sync::Arc::default(),
        }
    }
}

/// An API answer: status, content type, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

const JSON: &str = "application/json";

pub(crate) fn json_answer(status: u16, v: &impl Serialize) -> Answer {
    Answer {
        status,
        content_type: JSON,
        body: serde_json::to_string(v).expect("API values serialize") + "\n",
    }
}

/// A 200 answer `{"status": "success", "data": …}`.
pub(crate) fn success(data: &impl Serialize) -> Answer {
    #[derive(Serialize)]
    struct Success<'a, T> {
        status: &'static str,
        data: &'a T,
    }
    json_answer(
        200,
        &Success {
            status: "success",
            data,
        },
    )
}

pub(crate) fn error(status: u16, message: &str) -> Answer {
    json_answer(status, &json!({ "status": "error", "error": message }))
}

pub(crate) fn query_error(e: &QueryError) -> Answer {
    let mut body = json!({ "status": "error", "error": e.to_string() });
    if let QueryError::UnknownMetric { known, .. } = e {
        body["known_metrics"] = json!(known);
    }
    json_answer(e.status(), &body)
}

/// A read-only connection to the history file: the idle one if it is still on that file, else
/// a new one.
pub(crate) fn connect(h: Option<&HistoryApi>) -> Result<(Pooled<'_>, &HistoryApi), QueryError> {
    let h = h.ok_or_else(|| {
        QueryError::NoDatabase("(history is disabled in the configuration)".into())
    })?;
    let Some(id) = file_id(&h.db) else {
        return Err(QueryError::NoDatabase(h.db.display().to_string()));
    };
    let idle = h
        .idle
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .filter(|(_, was)| *was == id);
    let conn = match idle {
        Some(c) => c,
        None => (open_read_only(&h.db)?, id),
    };
    Ok((
        Pooled {
            conn: Some(conn),
            home: &h.idle,
        },
        h,
    ))
}
