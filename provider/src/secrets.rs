//! A replica's secrets as files, as OpenFaaS functions read them: one file per secret, named
//! after it, in a directory of the replica's own (mode 0700, files 0400), whose path the
//! process gets in `SLUICE_SECRETS_DIR`. The directory goes when the replica stops.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sluice_core::SecretValue;

/// The variable that tells a function's process where its secrets are.
pub const SECRETS_DIR_ENV: &str = "SLUICE_SECRETS_DIR";

/// A replica's secrets directory; removed when dropped.
#[derive(Debug)]
pub(crate) struct SecretFiles {
    dir: PathBuf,
}

impl SecretFiles {
    /// Writes `secrets` into a new directory `root/<replica>`; `root` is made (mode 0700) if it
    /// does not exist. The names are checked DNS labels, so each is a plain file name.
    pub(crate) fn write(
        root: &Path,
        replica: &str,
        secrets: &[(String, SecretValue)],
    ) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        let dir = root.join(replica);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        // From here on, a failure removes what was written.
        let files = Self { dir };
        for (name, value) in secrets {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(files.dir.join(name))?;
            file.write_all(value.expose())?;
        }
        Ok(files)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SecretFiles {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove a replica's secrets");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_replica_gets_its_own_private_files_removed_when_it_stops() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().join("secrets");
        let secrets = vec![
            ("db".to_owned(), SecretValue::new(b"pw".to_vec())),
            ("raw".to_owned(), SecretValue::new(vec![0, 255])),
        ];
        let a = SecretFiles::write(&root, "f-1", &secrets).unwrap();
        let b = SecretFiles::write(&root, "f-2", &secrets[..1]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(a.dir()), 0o700);
        assert_eq!(mode(&a.dir().join("db")), 0o400);
        assert_eq!(std::fs::read(a.dir().join("db")).unwrap(), b"pw");
        assert_eq!(std::fs::read(a.dir().join("raw")).unwrap(), [0, 255]);
        assert!(!b.dir().join("raw").exists());
        // A replica of that name already has a directory: refused, not shared.
        assert!(SecretFiles::write(&root, "f-1", &secrets).is_err());
        let dir = a.dir().to_owned();
        drop(a);
        assert!(!dir.exists());
        assert!(b.dir().join("db").exists());
    }
}
