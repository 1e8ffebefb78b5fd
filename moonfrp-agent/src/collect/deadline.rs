//! Calls that can block without end — a hung D-Bus under `systemctl`, a hung NFS server under
//! `statvfs` — are given a deadline, so that one of them costs its collector this interval and
//! never the collection. A command is killed at its deadline; a system call cannot be, so the
//! path it hangs on is remembered as stuck and skipped until the call returns (as
//! node_exporter's `--collector.filesystem.mount-timeout` does).
use std::{
    collections::BTreeSet,
    io::Read as _,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use tracing::warn;

use super::CollectError;

/// Largest output read from a command.
const MAX_OUTPUT: u64 = 16 << 20;

/// Runs `cmd` and returns its output, killing it if it has not finished within `limit`.
pub fn output_within(
    mut cmd: Command,
    what: &str,
    limit: Duration,
) -> Result<Output, CollectError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CollectError::read(what, e))?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let reader = thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(out) = out {
            let _ = out.take(MAX_OUTPUT).read_to_end(&mut o);
        }
        if let Some(err) = err {
            let _ = err.take(MAX_OUTPUT).read_to_end(&mut e);
        }
        (o, e)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| CollectError::read(what, e))? {
            break status;
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Err(CollectError::Timeout {
                what: what.to_owned(),
                limit,
            });
        }
        thread::sleep(Duration::from_millis(2));
    };
    let (stdout, stderr) = reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs a blocking call on each of a list of paths on a thread of its own, waiting at most
/// `limit` for all of them. A path whose call is still running at the deadline is stuck: it is
/// skipped from then on, until that call returns.
#[derive(Debug, Default)]
pub struct Stuck {
    paths: Arc<Mutex<BTreeSet<String>>>,
}

impl Stuck {
    /// Whether `path` is stuck now.
    pub fn contains(&self, path: &str) -> bool {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(path)
    }

    /// `call` on every path not stuck, in order, within `limit`: the results that came in time
    /// (in order), and the paths that got stuck this time.
    pub fn each<T: Send + 'static>(
        &self,
        paths: Vec<String>,
        limit: Duration,
        call: fn(&str) -> T,
    ) -> (Vec<(String, T)>, Vec<String>) {
        let todo: Vec<String> = paths.into_iter().filter(|p| !self.contains(p)).collect();
        let n = todo.len();
        let (tx, rx) = mpsc::channel();
        let current: Arc<Mutex<Option<String>>> = Arc::default();
        let (cur, stuck) = (current.clone(), self.paths.clone());
        let spawned = thread::Builder::new()
            .name("moonfrp-statvfs".into())
            .spawn(move || {
                for p in todo {
                    *cur.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(p.clone());
                    let r = call(&p);
                    // Back in time or late: either way the path answers again.
                    stuck
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&p);
                    if tx.send((p, r)).is_err() {
                        // The collection went on without this thread; it stops here.
                        return;
                    }
                }
            });
        if spawned.is_err() {
            return (Vec::new(), Vec::new());
        }
        let deadline = Instant::now() + limit;
        let mut done = Vec::with_capacity(n);
        while done.len() < n {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(r) => done.push(r),
                Err(_) => break,
            }
        }
        let mut newly = Vec::new();
        if done.len() < n
            && let Some(p) = current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            && !done.iter().any(|(d, _)| *d == p)
        {
            warn!(path = %crate::untrusted::escape(&p), "a call on this path did not return within {limit:?}: it is skipped until it does");
            self.paths
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(p.clone());
            newly.push(p);
        }
        (done, newly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let started = Instant::now();
        let e = output_within(sleep, "sleep", Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("did not finish within 200ms"), "{e}");
        let mut echo = Command::new("sh");
        echo.args(["-c", "echo out; echo err >&2"]);
        let o = output_within(echo, "sh", Duration::from_secs(5)).unwrap();
        assert_eq!(
            (o.stdout.as_slice(), o.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }

    fn slow_on_b(p: &str) -> usize {
        if p == "/b" {
            thread::sleep(Duration::from_millis(600));
        }
        p.len()
    }

    #[test]
    fn a_stuck_path_is_skipped_until_its_call_returns() {
        let stuck = Stuck::default();
        let paths = || vec!["/a".to_owned(), "/b".to_owned(), "/c".to_owned()];
        let (done, newly) = stuck.each(paths(), Duration::from_millis(100), slow_on_b);
        assert_eq!(
            done.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["/a"]
        );
        assert_eq!(newly, ["/b"]);
        // While /b hangs, the others are read and /b is not tried again.
        let (done, newly) = stuck.each(paths(), Duration::from_millis(100), slow_on_b);
        assert_eq!(
            done.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["/a", "/c"]
        );
        assert!(newly.is_empty());
        // Once its call returns, /b is read again.
        thread::sleep(Duration::from_millis(700));
        assert!(!stuck.contains("/b"));
    }
}
