//! Durable small files outside the log: the one atomic replace every edgepipe component uses
//! for state it rewrites whole (consumer checkpoints, the device registry, detector snapshots,
//! model artifacts, the agent's acknowledged positions).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically and durably: write a temp file beside it
/// (`<name>.tmp`), fdatasync it, rename it over `path`, then fsync the directory.
///
/// When this returns `Ok`, a crash at any later moment leaves `bytes` at `path`; a crash
/// before it leaves either the old content or the new, never a mix. Without the directory
/// fsync the rename itself may not survive a power loss: the old file would come back.
/// Concurrent writers of the same path must hold their own lock (they share the temp name).
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path(path)?;
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(&dir)
}

/// Makes the directory's entries (files created, renamed or removed in it) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `<dir>/<name>.tmp`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_writes_whole_content_and_leaves_no_temp_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        replace_file(&path, b"one")?;
        replace_file(&path, b"two, longer")?;
        assert_eq!(std::fs::read(&path)?, b"two, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        Ok(())
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error_not_a_panic() {
        assert!(replace_file(Path::new("/"), b"x").is_err());
        assert!(replace_file(Path::new(""), b"x").is_err());
    }
}
