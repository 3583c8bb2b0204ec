//! The data directory is private. It holds every key and value of the cache in plain text (the
//! RocksDB log, the checkpoints), so, as etcd does with its data dir, crema keeps it `0700`:
//! created so, or made so while it is still empty, and a node refuses to start on one holding
//! data that other local users can enter (the directory or any directory in it open to group
//! or others), naming the path and the command that fixes it. Files in a `0700` directory are
//! out of other users' reach whatever their own mode; still, those crema writes itself
//! (checkpoints) are created `0600`, and `crema serve` sets the process umask to `077` at start
//! so RocksDB's are too. (A library user's process keeps its own umask.)

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Mode bits that let other users in.
const OTHERS: u32 = 0o077;

/// Creates `dir` (and missing parents) `0700`, makes an empty one `0700`, or checks that `dir`
/// and every directory in it is closed to other users.
///
/// # Errors
/// `Storage` naming the first directory open to others and how to fix it, or the I/O error.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(mut entries) => {
            if entries.next().is_none() {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
                Ok(())
            } else {
                check_private(dir, dir)
            }
        }
    }
}

fn check_private(root: &Path, dir: &Path) -> Result<()> {
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & OTHERS != 0 {
        return Err(Error::Storage(format!(
            "{} is open to other users (mode {mode:o}), and the data directory holds the cache's data in plain \
             text: run `chmod -R go-rwx {}` and start again",
            dir.display(),
            root.display()
        )));
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            check_private(root, &entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_is_private_and_an_open_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::write(dir.join("raft.log"), b"secret").unwrap();
        assert!(ensure_private_dir(&dir).is_ok(), "a private dir with data is fine");

        let sub = dir.join("checkpoints");
        fs::DirBuilder::new().mode(0o755).create(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        let refused = ensure_private_dir(&dir).unwrap_err().to_string();
        assert!(refused.contains("checkpoints") && refused.contains("mode 755"), "{refused}");
        assert!(refused.contains(&format!("chmod -R go-rwx {}", dir.display())), "{refused}");

        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        assert!(ensure_private_dir(&dir).unwrap_err().to_string().contains("mode 750"));

        let empty = tmp.path().join("empty");
        fs::DirBuilder::new().mode(0o755).create(&empty).unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&empty).unwrap();
        assert_eq!(mode(&empty), 0o700, "an empty dir is made private");
    }
}
