//! The JSON API, one file per resource: `history` (`/api/v1/history`, `/api/v1/summary`),
//! `tunnels`, `status`, `peers`, `inspect` and `alerts`. Answers are typed structs that the
//! server writes and the clients (`status`, `top`, `inspect`, `history`) read. Handlers run on
//! the blocking pool (they read SQLite or the kernel), never on the collection thread.
pub mod alerts;
pub mod history;
pub mod inspect;
pub mod peers;
pub mod status;
pub mod tunnels;

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Value, json};

use crate::history::{Settings, query::QueryError, store::open_read_only};

/// Where the history database is, for readers.
#[derive(Clone, Debug)]
pub struct HistoryApi {
    pub db: PathBuf,
    pub settings: Settings,
    /// Refused and errors per tunnel over the last hour, and when they were read: `status` is
    /// asked every second by the web page and `top`, the hour moves slowly (see `last_hour`).
    pub(crate) last_hour: std::sync::Arc<std::sync::Mutex<Option<history::LastHour>>>,
}

impl HistoryApi {
    pub fn new(db: PathBuf, settings: Settings) -> Self {
        Self {
            db,
            settings,
            last_hour: std::sync::Arc::default(),
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
pub(crate) fn success(data: &Value) -> Answer {
    json_answer(200, &json!({ "status": "success", "data": data }))
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

pub(crate) fn connect(
    h: Option<&HistoryApi>,
) -> Result<(rusqlite::Connection, &HistoryApi), QueryError> {
    let h = h.ok_or_else(|| {
        QueryError::NoDatabase("(history is disabled in the configuration)".into())
    })?;
    if !h.db.exists() {
        return Err(QueryError::NoDatabase(h.db.display().to_string()));
    }
    Ok((open_read_only(&h.db)?, h))
}
