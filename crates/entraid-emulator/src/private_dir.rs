//! A private temporary directory for the files the emulator leaves for its clients (the CA
//! certificate) and for the redis-server it starts.
//!
//! A fixed name in the shared temporary directory could be created first by another user,
//! or be a symlink to a file of ours that a plain write would overwrite. `tempfile` gives
//! the directory a random name and makes it with `mkdir` (mode 0700), which fails on any
//! existing path, symlinks included, retrying another name; files in it are made with
//! `O_EXCL`. It is removed, with what is in it, when dropped.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A directory only we can enter, removed on drop.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    dir: tempfile::TempDir,
}

impl PrivateDir {
    /// Makes `<temp dir>/<prefix>-<pid>-<random>` with mode 0700.
    pub(crate) fn create(prefix: &str) -> std::io::Result<PrivateDir> {
        Self::create_in(&std::env::temp_dir(), prefix)
    }

    fn create_in(base: &Path, prefix: &str) -> std::io::Result<PrivateDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-{}-", std::process::id()))
            .tempdir_in(base)?;
        // The umask may have taken bits off, never added any: set exactly 0700.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(PrivateDir { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a new file `name` in the directory (`O_EXCL`: never an existing one).
    pub(crate) fn write_new(&self, name: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path().join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)?;
        file.write_all(contents)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use std::fs::DirBuilder;
    use std::os::unix::fs::DirBuilderExt as _;

    use super::*;

    #[test]
    fn private_unique_and_removed_on_drop() {
        let a = PrivateDir::create("entraid-emulator-test").unwrap();
        let b = PrivateDir::create("entraid-emulator-test").unwrap();
        assert_ne!(a.path(), b.path());
        let meta = std::fs::symlink_metadata(a.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o700);
        let file = a.write_new("ca.pem", b"pem").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"pem");
        assert!(
            a.write_new("ca.pem", b"again").is_err(),
            "an existing file is not reused"
        );
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
    }

    #[test]
    fn an_existing_path_or_symlink_is_never_reused() {
        let base = PrivateDir::create("entraid-emulator-test-base").unwrap();
        let target = base.path().join("target");
        std::fs::create_dir(&target).unwrap();
        // mkdir on a planted symlink fails instead of following it.
        let planted = base.path().join("planted");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let error = DirBuilder::new().mode(0o700).create(&planted).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        let dir = PrivateDir::create_in(base.path(), "x").unwrap();
        assert!(dir.path().starts_with(base.path()));
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    }
}
