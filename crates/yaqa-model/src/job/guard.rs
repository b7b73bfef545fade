//! Outputs never overwrite inputs. Before any work, every job checks that none of its output paths
//! resolves to one of its inputs, lies inside an input folder, or is a folder holding an input (a
//! quantized file written into the model's own folder, `export --out` at the model folder, `round --out`
//! at its `--weights`, `merge --out` at one of its shards, `hessian --out` at the folder of its
//! `--calib-ids`): such a run could destroy what it reads and could not be redone.
//!
//! Paths are compared after resolving symbolic links and `..` (an output that does not exist yet is
//! resolved through its nearest existing ancestor), and an existing output file is also compared by
//! device and inode, so a hard link to an input is caught too.

use std::path::{Component, Path, PathBuf};

use crate::error::Result;

/// One path a job reads or writes, with the flag that named it (for the message).
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    pub flag: &'a str,
    pub path: &'a Path,
}

/// Shorthand for [`Named`].
pub fn named<'a>(flag: &'a str, path: &'a Path) -> Named<'a> {
    Named { flag, path }
}

/// Refuses the run if an output resolves to an input, lies inside an input folder, or is an existing
/// folder with an input inside it.
///
/// **Errors**: [`crate::ModelError::Refused`] naming both flags and paths.
pub fn refuse_overwrite(outputs: &[Named<'_>], inputs: &[Named<'_>]) -> Result<()> {
    for out in outputs {
        let out_path = resolve(out.path);
        for input in inputs {
            let in_path = resolve(input.path);
            let same = out_path == in_path || same_file(out.path, input.path);
            let inside = input.path.is_dir() && out_path.starts_with(&in_path);
            let holds = out.path.is_dir() && in_path.starts_with(&out_path);
            let relation = match (same, inside, holds) {
                (true, _, _) => "is",
                (_, true, _) => "lies inside",
                (_, _, true) => "holds",
                _ => continue,
            };
            crate::bail!(
                "{} {} {relation} {} {}: writing it would destroy an input; choose another output path",
                out.flag,
                out.path.display(),
                input.flag,
                input.path.display(),
            );
        }
    }
    Ok(())
}

/// `path` absolute, with symbolic links and `.`/`..` resolved as far as it exists.
fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |d| d.join(path))
    };
    // The longest existing prefix is canonicalized; the rest is appended with `..` applied by hand.
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    loop {
        if let Ok(c) = base.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return absolute,
        }
    }
}

/// Whether two existing paths are the same file (hard links included).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    let _ = (a, b);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("yaqa-guard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_outputs_that_are_or_lie_inside_inputs() {
        let d = temp("refuse");
        let model = d.join("model");
        std::fs::create_dir_all(&model).unwrap();
        let weights = model.join("model.safetensors");
        std::fs::write(&weights, b"x").unwrap();
        let inputs = [named("--model", &model)];
        // The model's own file, through `..` and a path that does not exist yet inside it.
        for out in [
            weights.clone(),
            d.join("model/../model/model.safetensors"),
            model.join("new/q.safetensors"),
            model.clone(),
        ] {
            let err = refuse_overwrite(&[named("--out", &out)], &inputs).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("--out") && msg.contains("--model"), "{msg}");
        }
        // A hard link to an input file.
        let link = d.join("link.safetensors");
        std::fs::hard_link(&weights, &link).unwrap();
        let err = refuse_overwrite(&[named("--out", &link)], &[named("--weights", &weights)])
            .unwrap_err();
        assert!(err.to_string().contains("is --weights"), "{err}");
        // A symbolic link to the model folder.
        #[cfg(unix)]
        {
            let sym = d.join("sym");
            std::os::unix::fs::symlink(&model, &sym).unwrap();
            assert!(
                refuse_overwrite(&[named("--out", &sym.join("q.safetensors"))], &inputs).is_err()
            );
        }
        // A folder holding the model folder may be written into: refused too.
        let err = refuse_overwrite(&[named("--out", &d)], &inputs).unwrap_err();
        assert!(err.to_string().contains("holds --model"), "{err}");
        // Beside the model is fine.
        refuse_overwrite(&[named("--out", &d.join("q.safetensors"))], &inputs).unwrap();
        refuse_overwrite(&[named("--out", &d.join("other"))], &inputs).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
