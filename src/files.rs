//! Private files and directories. The data dir holds hashed keys, sealed credentials and usage
//! metadata: it is created 0700 and every file in it 0600, and a wider mode left by an older
//! version is narrowed at start (with a warning), so only the service's user can read them.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Creates `dir` (and missing parents) mode 0700, or narrows an existing one to it.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(0o700);
    b.create(dir)?;
    narrow(dir, 0o700)
}

/// Opens `path` for reading and writing, creating it mode 0600 (narrowing an existing file's mode).
pub fn private_file(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).truncate(false).read(true).write(true);
    #[cfg(unix)]
    o.mode(0o600);
    let f = o.open(path)?;
    narrow(path, 0o600)?;
    Ok(f)
}

/// Narrows `path` to `mode` if group or others may access it.
pub fn narrow(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        let meta = std::fs::metadata(path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "narrowing permissions to {mode:o}: the data dir is private");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
