//! Preflight of an output location before long work: the folder it goes into can be written, and the
//! file system has room for what the run plans to write there (its estimate, with the temporary copies
//! and checkpoints it keeps on the way). A full disk found after hours of collection is a lost run; found
//! here it is one line naming the path, what is needed and what is free.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::job::guard::{Named, named, refuse_overwrite};
use crate::job::memory::Bytes;

/// The nearest existing folder above `path` (where the output's folder will be created), or the existing
/// file that stands where a folder would have to be (`--json notes.txt/r.json`).
fn existing_folder(path: &Path) -> std::result::Result<PathBuf, PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |d| d.join(path))
    };
    let mut dir = absolute.as_path();
    loop {
        if dir.is_dir() {
            return Ok(dir.to_path_buf());
        }
        match dir.parent() {
            Some(p) if p.exists() && !p.is_dir() => return Err(p.to_path_buf()),
            Some(p) => dir = p,
            None => return Ok(absolute),
        }
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`; `None` where the
/// platform does not say.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Refuses the run unless the folder `out` goes into can be written (a probe file is created and
/// removed) and its file system has at least `need` bytes free for `what`.
///
/// **Errors**: [`ModelError::Write`] naming the folder when it cannot be written;
/// [`ModelError::Refused`] naming the output, the bytes needed and the bytes free.
pub fn check_output(flag: &str, out: &Path, need: u64, what: &str) -> Result<()> {
    let dir = existing_folder(out).map_err(|file| {
        ModelError::Refused(format!(
            "{flag} {}: {} is a file, not a folder; choose another output path",
            out.display(),
            file.display()
        ))
    })?;
    let probe = dir.join(format!(".yaqa-preflight-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| ModelError::Write {
        path: dir.clone(),
        source: e,
    })?;
    let _ = std::fs::remove_file(&probe);
    if let Some(free) = free_bytes(&dir)
        && free < need
    {
        crate::bail!(
            "{flag} {}: {what} needs about {} on the file system of {}, which has {} free; free some \
             space or choose another output path",
            out.display(),
            Bytes(need),
            dir.display(),
            Bytes(free)
        );
    }
    Ok(())
}

/// Room asked for a JSON report: far above any report's size, so only a full or unwritable location
/// stops the run.
const REPORT_BYTES: u64 = 1 << 20;

/// Checks a report file (`--json`) before the work whose results it records: it is none of the run's
/// `inputs` ([`refuse_overwrite`]) and its folder can be written with room to spare ([`check_output`]).
///
/// **Errors**: those of [`refuse_overwrite`] and [`check_output`].
pub fn check_report(flag: &str, path: &Path, inputs: &[Named<'_>]) -> Result<()> {
    refuse_overwrite(&[named(flag, path)], inputs)?;
    check_output(flag, path, REPORT_BYTES, "the JSON report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_with_room_passes_and_one_without_is_refused_with_the_figures() {
        let dir = std::env::temp_dir().join(format!("yaqa-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("not/yet/q.safetensors");
        check_output("--out", &out, 1, "the quantized file").unwrap();
        let free = free_bytes(&dir).expect("statvfs on unix");
        assert!(free > 0);
        let err = check_output(
            "--out",
            &out,
            free.saturating_mul(4).max(1 << 50),
            "the factors",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--out") && err.contains("the factors needs about"),
            "{err}"
        );
        assert!(err.contains("free"), "{err}");
        // Nothing is left behind: no probe file, no created folders.
        assert!(!dir.join("not").exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
