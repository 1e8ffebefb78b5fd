//! The textfile output: the same exposition as `/metrics` (text format 0.0.4, no timestamps)
//! written every interval for node_exporter's textfile collector. Each write goes to a temporary
//! file in the same directory and is renamed over the target, so a reader sees the old file or
//! the new one, never a partial one.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

/// Why the textfile cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum TextfileError {
    #[error(
        "textfile {path}: directory {dir} does not exist; create it or choose another --textfile"
    )]
    NoDir { path: PathBuf, dir: PathBuf },
    #[error(
        "textfile {path}: cannot write in {dir}: {source} (check its permissions, or choose another --textfile)"
    )]
    NotWritable {
        path: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("textfile {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the textfile atomically.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
}

impl Writer {
    /// Checks now that the directory exists and is writable, so a bad path stops the agent at
    /// start instead of failing every interval.
    pub fn new(path: &Path) -> Result<Self, TextfileError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(TextfileError::NoDir {
                path: path.to_owned(),
                dir,
            });
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A dot name: node_exporter only reads `*.prom`, so it never picks up the temporary file.
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        fs::File::create(&tmp)
            .and_then(|_| fs::remove_file(&tmp))
            .map_err(|source| TextfileError::NotWritable {
                path: path.to_owned(),
                dir: dir.clone(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            tmp,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `text`.
    pub fn write(&self, text: &str) -> Result<(), TextfileError> {
        let err = |source| TextfileError::Write {
            path: self.path.clone(),
            source,
        };
        let mut f = fs::File::create(&self.tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            err(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moonfrp.prom");
        let w = Writer::new(&path).unwrap();
        w.write("a 1\n").unwrap();
        w.write("a 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["moonfrp.prom"]);
    }

    #[test]
    fn missing_directory_is_named() {
        let err = Writer::new(Path::new("/nonexistent/dir/moonfrp.prom"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/dir") && err.contains("does not exist"),
            "{err}"
        );
    }
}
