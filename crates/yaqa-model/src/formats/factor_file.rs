//! Factor files: one safetensors file per linear layer and sketch, holding the packed lower triangles of
//! `h_in` and `h_out` in f64 and the provenance needed to merge shards safely (docs/FORMAT.md).
//!
//! Triangles are stored in f64 because the factors are accumulated as f64 sums ([`SymMat`]) and shards
//! are merged by adding them: rounding a partial sum to f32 would lose the accuracy DESIGN.md §2 asks for
//! (the authors found even TF32 accumulation too coarse) and would make a merged run differ from a single
//! pass by more than the order of additions. The price is size: `n(n+1)/2 · 8` bytes, 1.3 MB for n = 576.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use yaqa_core::SymMat;
use yaqa_core::sketch::{Factors, SketchKind};

use crate::error::{ModelError, Result};
use crate::formats::header::Header;
use crate::formats::hf::{RawTensor, SafetensorsFile, write_safetensors};
use crate::transformer::weights::LayerId;

/// The metadata key that holds a factor file's JSON header.
pub const META_KEY: &str = "yaqa";
/// The `format` field of a factor file.
pub const FORMAT: &str = "yaqa-factors";
/// The version written (and the only one read).
pub const VERSION: u64 = 2;

/// How the factors were collected: recorded in every file, checked on merge.
#[derive(Clone, Debug, PartialEq)]
pub struct Provenance {
    /// Seed of the calibration windows or samples and of the Fisher labels.
    pub seed: u64,
    pub seq_len: usize,
    /// `"data-free"` or `"text:<file names>"`.
    pub calib: String,
    /// The shards accumulated so far, as `"I/N"` (several after a merge).
    pub shards: Vec<String>,
    /// [`crate::formats::checkpoint::fingerprint`] of the model the factors belong to.
    pub model_fingerprint: String,
}

/// A sketch's short name in file names and headers: `xtx`, `b`, `a-p<pass>`.
pub fn sketch_tag(kind: SketchKind) -> String {
    match kind {
        SketchKind::Xtx => "xtx".into(),
        SketchKind::B => "b".into(),
        SketchKind::A { pass } => format!("a-p{pass}"),
    }
}

/// Parses [`sketch_tag`].
pub fn parse_sketch_tag(tag: &str) -> Option<SketchKind> {
    match tag {
        "xtx" => Some(SketchKind::Xtx),
        "b" => Some(SketchKind::B),
        _ => tag
            .strip_prefix("a-p")
            .and_then(|p| p.parse().ok())
            .map(|pass| SketchKind::A { pass }),
    }
}

/// The file of `layer`'s `kind` factors in `dir`.
pub fn factor_path(dir: &Path, layer: LayerId, kind: SketchKind) -> PathBuf {
    dir.join(format!("{}.{}.safetensors", layer.name(), sketch_tag(kind)))
}

/// Writes one layer's factors (atomically).
///
/// **Errors**: I/O, named with the path.
pub fn write_factors(
    path: &Path,
    layer: LayerId,
    m: usize,
    f: &Factors,
    prov: &Provenance,
) -> Result<()> {
    let mut tensors = vec![("h_in".to_string(), RawTensor::f64s(&f.h_in.data))];
    if let Some(h) = &f.h_out {
        tensors.push(("h_out".to_string(), RawTensor::f64s(&h.data)));
    }
    if let Some(h) = &f.xtx {
        tensors.push(("xtx".to_string(), RawTensor::f64s(&h.data)));
    }
    let header = json!({
        "format": FORMAT,
        "version": VERSION,
        "layer": layer.name(),
        "m": m,
        "n": f.h_in.n,
        "sketch": sketch_tag(f.kind),
        "n_seqs": f.n_seqs,
        "n_tokens": f.n_tokens,
        "scale": f.scale,
        "seed": prov.seed,
        "seq_len": prov.seq_len,
        "calib": prov.calib,
        "shards": prov.shards,
        "model_fingerprint": prov.model_fingerprint,
    });
    write_safetensors(path, &tensors, META_KEY, &header.to_string())
}

/// One layer's factors read back, with their provenance.
#[derive(Clone, Debug, PartialEq)]
pub struct FactorFile {
    pub layer: LayerId,
    pub m: usize,
    pub factors: Factors,
    pub provenance: Provenance,
}

fn packed(file: &SafetensorsFile, name: &str, n: usize) -> Result<SymMat> {
    let (info, bytes) = file.raw(name, "F64")?;
    // `n` comes from the header: a product that overflows is a header no tensor can match.
    let want = n
        .checked_add(1)
        .and_then(|n1| n.checked_mul(n1))
        .map(|p| p / 2)
        .ok_or_else(|| {
            ModelError::format(
                file.path(),
                format!("tensor {name}: a packed triangle of {n} × {n} overflows"),
            )
        })?;
    if info.shape != [want] {
        return Err(ModelError::ShapeMismatch {
            path: file.path().to_path_buf(),
            tensor: name.to_string(),
            expected: vec![want],
            found: info.shape.clone(),
        });
    }
    let data = bytes
        .chunks_exact(8)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            f64::from_le_bytes(a)
        })
        .collect();
    Ok(SymMat::from_packed(n, data)?)
}

/// Reads a factor file, checking its header and tensor shapes.
///
/// **Errors**: truncated or malformed files, a missing or wrong header (all naming the file).
pub fn read_factors(path: &Path) -> Result<FactorFile> {
    let file = SafetensorsFile::open(path)?;
    let bad = |why: String| ModelError::format(path, why);
    let text = file
        .metadata
        .get(META_KEY)
        .ok_or_else(|| bad(format!("no {META_KEY:?} metadata: not a yaqa factor file")))?;
    let h: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("factor header is not JSON: {e}")))?;
    let header = Header::new(path, &h, FORMAT, VERSION)?;
    let num = |key: &str| header.u64(key);
    let string = |key: &str| header.string(key);
    let layer_name = string("layer")?;
    let layer = LayerId::parse(&layer_name)
        .ok_or_else(|| bad(format!("unknown layer name {layer_name:?}")))?;
    let (m, n) = (header.dim("m")?, header.dim("n")?);
    let sketch = string("sketch")?;
    let kind =
        parse_sketch_tag(&sketch).ok_or_else(|| bad(format!("unknown sketch {sketch:?}")))?;
    let h_in = packed(&file, "h_in", n)?;
    let h_out = if file.tensors.contains_key("h_out") {
        Some(packed(&file, "h_out", m)?)
    } else {
        None
    };
    let xtx = if file.tensors.contains_key("xtx") {
        Some(packed(&file, "xtx", n)?)
    } else {
        None
    };
    let two_sided = matches!(kind, SketchKind::B | SketchKind::A { pass: 1.. });
    if two_sided && h_out.is_none() {
        return Err(bad(format!("sketch {sketch} needs an h_out tensor")));
    }
    if two_sided != xtx.is_some() {
        return Err(bad(format!(
            "sketch {sketch} {} an xtx tensor",
            if two_sided { "needs" } else { "must not have" }
        )));
    }
    let shards = header.strings("shards")?;
    Ok(FactorFile {
        layer,
        m,
        factors: Factors {
            kind,
            h_in,
            h_out,
            n_seqs: num("n_seqs")?,
            n_tokens: num("n_tokens")?,
            scale: h["scale"]
                .as_f64()
                .ok_or_else(|| bad("header field \"scale\" is not a number".into()))?,
            xtx,
        },
        provenance: Provenance {
            seed: num("seed")?,
            seq_len: header.usize("seq_len")?,
            calib: string("calib")?,
            shards,
            model_fingerprint: string("model_fingerprint")?,
        },
    })
}

/// Adds `other` into `acc`: same layer, model, sequence length and calibration source, and no shard
/// counted twice.
///
/// **Errors**: any of those disagreeing (naming `other_path`), or [`Factors::merge`]'s errors.
pub fn merge_into(acc: &mut FactorFile, other: &FactorFile, other_path: &Path) -> Result<()> {
    let bad = |why: String| ModelError::format(other_path, why);
    if acc.layer != other.layer || acc.m != other.m {
        return Err(bad(format!(
            "layer {} does not match {}",
            other.layer.name(),
            acc.layer.name()
        )));
    }
    let (a, b) = (&acc.provenance, &other.provenance);
    if a.model_fingerprint != b.model_fingerprint {
        return Err(bad(
            "factors of a different model (fingerprints differ)".into()
        ));
    }
    if a.seq_len != b.seq_len || a.calib != b.calib || a.seed != b.seed {
        return Err(bad(format!(
            "collected with seq_len {} / calib {} / seed {}, but the first shard used {} / {} / {}",
            b.seq_len, b.calib, b.seed, a.seq_len, a.calib, a.seed
        )));
    }
    if let Some(dup) = b.shards.iter().find(|s| a.shards.contains(s)) {
        return Err(bad(format!("shard {dup} is already in the sum")));
    }
    acc.factors
        .merge(&other.factors)
        .map_err(|e| bad(e.to_string()))?;
    acc.provenance.shards.extend(b.shards.iter().cloned());
    acc.provenance.shards.sort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::weights::LinearKind;

    fn sample(seed: f64) -> Factors {
        let mut f = Factors::sketch_b(3, 2);
        f.h_in = SymMat::from_packed(2, vec![1.0 + seed, 0.5, 2.0]).unwrap();
        f.h_out = Some(SymMat::from_packed(3, vec![1.0, 0.1, 2.0, 0.2, 0.3, 3.0 + seed]).unwrap());
        f.xtx = Some(SymMat::from_packed(2, vec![4.0, 0.25 + seed, 5.0]).unwrap());
        f.n_seqs = 2;
        f.n_tokens = 20;
        f
    }

    fn prov(shard: &str) -> Provenance {
        Provenance {
            seed: 5,
            seq_len: 10,
            calib: "data-free".into(),
            shards: vec![shard.into()],
            model_fingerprint: "abc".into(),
        }
    }

    #[test]
    fn round_trip_merge_and_errors() {
        let dir = std::env::temp_dir().join(format!("yaqa-factor-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let layer = LayerId {
            block: 1,
            kind: LinearKind::Up,
        };
        let p0 = factor_path(&dir, layer, SketchKind::B);
        write_factors(&p0, layer, 3, &sample(0.0), &prov("0/2")).unwrap();
        let mut a = read_factors(&p0).unwrap();
        assert_eq!(a.factors, sample(0.0));
        assert_eq!(a.layer, layer);
        let p1 = dir.join("other.safetensors");
        write_factors(&p1, layer, 3, &sample(1.0), &prov("1/2")).unwrap();
        let b = read_factors(&p1).unwrap();
        merge_into(&mut a, &b, &p1).unwrap();
        assert_eq!(a.factors.n_seqs, 4);
        assert_eq!(a.factors.h_in.data, vec![3.0, 1.0, 4.0]);
        assert_eq!(a.factors.xtx.as_ref().unwrap().data, vec![8.0, 1.5, 10.0]);
        assert_eq!(a.provenance.shards, vec!["0/2", "1/2"]);
        // The same shard twice is refused.
        let err = merge_into(&mut a, &b, &p1).unwrap_err().to_string();
        assert!(
            err.contains("already") && err.contains("other.safetensors"),
            "{err}"
        );
        // A truncated file names itself.
        let bytes = std::fs::read(&p0).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
        let err = read_factors(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.safetensors") && err.contains("truncated"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
