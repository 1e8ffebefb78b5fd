//! The textfile output: the same exposition as `/metrics` (text format 0.0.4, no timestamps)
//! written every interval for node_exporter's textfile collector. Each write goes to a temporary
//! file in the same directory and is renamed over the target, so a reader sees the old file or
//! the new one, never a partial one.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
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
    #[error(
        "textfile {path}: it is {kind}, not a regular file; it is not replaced (remove it, or choose another --textfile)"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
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
    /// Checks now that the directory exists and is writable and that the target is a regular
    /// file or absent, so a bad path stops the agent at start instead of failing every interval.
    pub fn new(path: &Path) -> Result<Self, TextfileError> {
        check_target(path)?;
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
        create_tmp(&tmp)
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

    /// Replaces the file with `text`, unless something other than a regular file took its
    /// place meanwhile.
    pub fn write(&self, text: &[u8]) -> Result<(), TextfileError> {
        check_target(&self.path)?;
        let err = |source| TextfileError::Write {
            path: self.path.clone(),
            source,
        };
        let mut f = create_tmp(&self.tmp).map_err(err)?;
        f.write_all(text).map_err(err)?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            err(e)
        })
    }
}

/// A regular file or nothing: a device, a FIFO, a directory or a symlink is never replaced.
fn check_target(path: &Path) -> Result<(), TextfileError> {
    let kind = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) if m.file_type().is_file() => return Ok(()),
        Ok(m) if m.file_type().is_symlink() => "a symbolic link",
        Ok(m) if m.is_dir() => "a directory",
        Ok(m) if m.file_type().is_fifo() => "a FIFO",
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => "a device",
        Ok(_) => "a special file",
    };
    Err(TextfileError::NotRegular {
        path: path.to_owned(),
        kind,
    })
}

/// Creates the temporary file anew, never through a symlink someone put at its name.
fn create_tmp(tmp: &Path) -> std::io::Result<fs::File> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moonfrp.prom");
        let w = Writer::new(&path).unwrap();
        w.write(b"a 1\n").unwrap();
        w.write(b"a 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["moonfrp.prom"]);
    }

    #[test]
    fn only_a_regular_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.prom");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = Writer::new(&fifo).unwrap_err().to_string();
        assert!(
            err.contains("a FIFO") && err.contains("not replaced"),
            "{err}"
        );
        let link = dir.path().join("link.prom");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let err = Writer::new(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(
            Writer::new(Path::new("/dev/null"))
                .unwrap_err()
                .to_string()
                .contains("a device")
        );
        // A file that turns into something else between writes is not replaced either.
        let path = dir.path().join("moonfrp.prom");
        let w = Writer::new(&path).unwrap();
        w.write(b"a 1\n").unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(matches!(
            w.write(b"a 2\n"),
            Err(TextfileError::NotRegular { .. })
        ));
        assert!(!dir.path().join("elsewhere").exists());
        // A symlink planted at the temporary file's name is removed, not followed.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("victim"), &w.tmp).unwrap();
        w.write(b"a 3\n").unwrap();
        assert!(!dir.path().join("victim").exists());
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 3\n");
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
