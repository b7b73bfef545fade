//! Factor folders: one factor file per layer and sketch (`model.layers.N.<module>.<sketch>.safetensors`,
//! `docs/FORMAT.md`), as `hessian` writes them and `quantize`, `merge` and the next Sketch A pass read
//! them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaqa_core::layer::Method;
use yaqa_core::sketch::{Factors, SketchKind};

use crate::error::{Context, ModelError, Result};
use crate::formats::factor_file::{
    FactorFile, Provenance, factor_path, parse_sketch_tag, read_factors, write_factors,
};
use crate::job::collect::Set;
use crate::transformer::weights::{LayerId, Model};

/// The factor files of a folder, by layer and sketch tag.
///
/// **Errors**: an unreadable folder, or one with no factor file.
pub fn factor_index(dir: &Path) -> Result<BTreeMap<LayerId, BTreeMap<String, PathBuf>>> {
    let mut index: BTreeMap<LayerId, BTreeMap<String, PathBuf>> = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))
        .with_context(|| format!("reading factor folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry
            .map_err(|e| ModelError::io(dir, e))
            .with_context(|| format!("reading factor folder {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".safetensors") else {
            continue;
        };
        let Some((layer, tag)) = stem.rsplit_once('.') else {
            continue;
        };
        if let (Some(id), Some(_)) = (LayerId::parse(layer), parse_sketch_tag(tag)) {
            index
                .entry(id)
                .or_default()
                .insert(tag.to_string(), entry.path());
        }
    }
    if index.is_empty() {
        crate::bail!(
            "{}: no factor files (expected model.layers.N.<module>.<sketch>.safetensors)",
            dir.display()
        );
    }
    Ok(index)
}

/// The factor file a method should use among a layer's files: YAQA needs a two-sided sketch (B, or the
/// last pass of A); the one-sided methods prefer `Σ x xᵀ`, then Sketch B's (which spans every sequence
/// of a `compare` folder, where Sketch A spans only the first `--n-seqs`: the rows of `compare` read the
/// same one), then Sketch A's pass 0.
///
/// **Errors**: no suitable file (naming the layer and the sketches found).
pub fn pick_factor_file(
    files: &BTreeMap<String, PathBuf>,
    method: Method,
    layer: LayerId,
) -> Result<PathBuf> {
    let last_a = files
        .keys()
        .filter_map(|t| match parse_sketch_tag(t) {
            Some(SketchKind::A { pass }) if pass > 0 => Some((pass, t.clone())),
            _ => None,
        })
        .max()
        .map(|(_, t)| t);
    let mut order: Vec<String> = match method {
        Method::Yaqa => vec!["b".into()],
        _ => vec!["xtx".into(), "b".into(), "a-p0".into()],
    };
    order.extend(last_a);
    order
        .iter()
        .find_map(|t| files.get(t).cloned())
        .with_context(|| {
            format!(
                "no suitable factors for {} with method {} (found sketches {:?})",
                layer.name(),
                method.name(),
                files.keys().collect::<Vec<_>>()
            )
        })
}

/// Reads one factor file and checks that it belongs to the model.
///
/// **Errors**: an unreadable file, or factors of another model (naming the file).
pub fn read_factor_checked(path: &Path, fingerprint: &str) -> Result<FactorFile> {
    let f = read_factors(path).with_context(|| format!("reading factors {}", path.display()))?;
    if f.provenance.model_fingerprint != fingerprint {
        crate::bail!(
            "{}: these factors were collected on a different model (fingerprint {}…, model {}…)",
            path.display(),
            &f.provenance.model_fingerprint.get(..12).unwrap_or(""),
            fingerprint.get(..12).unwrap_or("")
        );
    }
    Ok(f)
}

/// Writes one factor file per layer into `dir`.
///
/// **Errors**: I/O, naming the file.
pub fn write_factor_dir(
    dir: &Path,
    model: &Model<f32>,
    factors: &BTreeMap<LayerId, Factors>,
    prov: &Provenance,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ModelError::io(dir, e))
        .with_context(|| format!("creating {}", dir.display()))?;
    for (id, f) in factors {
        let m = id.kind.shape(&model.config).0;
        let path = factor_path(dir, *id, f.kind);
        write_factors(&path, *id, m, f, prov)
            .with_context(|| format!("writing factors {}", path.display()))?;
    }
    Ok(())
}

/// Every layer's factors of `kind` from `dir`, if all are there and were made from the same calibration
/// over `n_seqs` sequences.
pub fn load_set(
    dir: &Path,
    model: &Model<f32>,
    kind: SketchKind,
    prov: &Provenance,
    n_seqs: u64,
) -> Option<Set> {
    LayerId::all(model)
        .into_iter()
        .map(|id| {
            let f = read_factors(&factor_path(dir, id, kind)).ok()?;
            (f.provenance == *prov && f.factors.n_seqs == n_seqs && f.layer == id)
                .then_some((id, f.factors))
        })
        .collect()
}

/// The next Sketch A pass of every layer of `set`.
///
/// **Errors**: a set that cannot start another pass (naming the layer).
pub fn next_sketch_a_pass(model: &Model<f32>, set: &Set, pass: u32) -> Result<Set> {
    set.iter()
        .map(|(id, f)| {
            let m = id.kind.shape(&model.config).0;
            f.next_sketch_a_pass(m)
                .map(|n| (*id, n))
                .with_context(|| format!("starting Sketch A pass {pass} of {}", id.name()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::weights::LinearKind;

    fn pick(tags: &[&str], method: Method) -> Result<String> {
        let files: BTreeMap<String, PathBuf> = tags
            .iter()
            .map(|t| (t.to_string(), PathBuf::from(format!("{t}.safetensors"))))
            .collect();
        let layer = LayerId {
            block: 3,
            kind: LinearKind::ALL[0],
        };
        pick_factor_file(&files, method, layer).map(|p| p.display().to_string())
    }

    #[test]
    fn one_sided_methods_read_the_widest_sum_and_yaqa_a_two_sided_sketch() {
        let compare = ["a-p0", "a-p1", "b"];
        assert_eq!(pick(&compare, Method::Ldlq).unwrap(), "b.safetensors");
        assert_eq!(pick(&compare, Method::Gptq).unwrap(), "b.safetensors");
        assert_eq!(pick(&compare, Method::Yaqa).unwrap(), "b.safetensors");
        let all = ["xtx", "a-p0", "a-p1", "b"];
        assert_eq!(pick(&all, Method::Ldlq).unwrap(), "xtx.safetensors");
        let a = ["a-p0", "a-p1", "a-p2"];
        assert_eq!(pick(&a, Method::Ldlq).unwrap(), "a-p0.safetensors");
        assert_eq!(pick(&a, Method::Yaqa).unwrap(), "a-p2.safetensors");
        let err = pick(&["xtx", "a-p0"], Method::Yaqa)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no suitable factors for model.layers.3.") && err.contains("method yaqa"),
            "{err}"
        );
    }
}
