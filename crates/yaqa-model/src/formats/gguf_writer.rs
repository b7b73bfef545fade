//! A GGUF v3 writer: the inverse of [`crate::formats::gguf`]'s reader for the layouts llama.cpp loads.
//!
//! Layout (all little-endian): magic `GGUF`, version 3 (`u32`), tensor count and metadata count (`u64`),
//! the metadata key/values (key as a `u64`-length string, value type `u32`, value), the tensor infos
//! (name, dimension count `u32`, dimensions fastest-first `u64`, ggml type `u32`, data offset `u64`),
//! zero padding to the alignment, then the tensor data, each tensor starting at a multiple of the
//! alignment from the start of the data section. The alignment is always [`ALIGNMENT`] = 32, written
//! as `general.alignment` too, so a reader that looks for the key and one that assumes the default agree.
//! The file is written to a temporary name beside `path` and renamed.

use std::io::Write;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufValue;
use crate::formats::hf::write_atomic;

/// The alignment of the data section and of every tensor in it (GGUF's default).
pub const ALIGNMENT: u64 = 32;

/// One tensor to write: its GGUF name, dimensions fastest-varying first (`[n, m]` for an `m × n`
/// matrix), ggml type id and the encoded bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub bytes: Vec<u8>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's id of a metadata value type.
fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

/// Appends `v` (without its type id). Arrays must hold one type (the reader gives them one); an empty
/// array, whose element type the reader does not keep, is written as an empty array of `u32`.
fn put_value(out: &mut Vec<u8>, key: &str, v: &GgufValue) -> Result<()> {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(items) => {
            let inner = items.first().map_or(4, value_type);
            if let Some(other) = items.iter().find(|i| value_type(i) != inner) {
                return Err(ModelError::Input(format!(
                    "GGUF metadata {key}: an array mixes value types {inner} and {}",
                    value_type(other)
                )));
            }
            out.extend_from_slice(&inner.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

/// The padding that brings `len` to a multiple of [`ALIGNMENT`].
fn padding(len: u64) -> usize {
    (len.next_multiple_of(ALIGNMENT) - len) as usize
}

/// Encodes a whole GGUF v3 file: `metadata` in the order given (with `general.alignment` = 32 added
/// first, so any `general.alignment` in `metadata` is refused), then `tensors` in the order given.
///
/// **Errors**: a repeated key or tensor name, `general.alignment` among `metadata`, an array mixing
/// value types, a tensor whose byte count is not what its type and dimensions need (ggml's block table
/// of the reader; an unknown type is refused).
pub fn encode(metadata: &[(String, GgufValue)], tensors: &[TensorOut]) -> Result<Vec<u8>> {
    let mut keys = std::collections::HashSet::new();
    for (k, _) in metadata {
        if k == "general.alignment" || !keys.insert(k.as_str()) {
            return Err(ModelError::Input(format!(
                "GGUF metadata {k}: given twice (the writer adds general.alignment itself)"
            )));
        }
    }
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(ModelError::Input(format!(
                "GGUF tensor {} given twice",
                t.name
            )));
        }
        let (_, elems, bytes) =
            crate::formats::gguf::ggml_type_size(t.type_id).ok_or_else(|| {
                ModelError::Input(format!(
                    "GGUF tensor {}: unknown ggml type {}",
                    t.name, t.type_id
                ))
            })?;
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let need = n
            .filter(|n| n.is_multiple_of(elems))
            .and_then(|n| (n / elems).checked_mul(bytes));
        if need != Some(t.bytes.len() as u64) {
            return Err(ModelError::Input(format!(
                "GGUF tensor {}: {} bytes for dimensions {:?} of ggml type {} (expected {need:?})",
                t.name,
                t.bytes.len(),
                t.dims,
                t.type_id
            )));
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64 + 1).to_le_bytes());
    let alignment = GgufValue::U32(ALIGNMENT as u32);
    for (k, v) in std::iter::once(("general.alignment", &alignment))
        .chain(metadata.iter().map(|(k, v)| (k.as_str(), v)))
    {
        put_string(&mut out, k);
        out.extend_from_slice(&value_type(v).to_le_bytes());
        put_value(&mut out, k, v)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.type_id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        let len = t.bytes.len() as u64;
        offset += len + padding(len) as u64;
    }
    out.resize(out.len() + padding(out.len() as u64), 0);
    for t in tensors {
        out.extend_from_slice(&t.bytes);
        out.resize(out.len() + padding(t.bytes.len() as u64), 0);
    }
    Ok(out)
}

/// Writes [`encode`]'s file to `path` atomically (a temporary file beside it, then a rename).
///
/// **Errors**: those of [`encode`]; [`ModelError::Write`] naming `path`.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[TensorOut],
) -> Result<()> {
    let bytes = encode(metadata, tensors)?;
    write_atomic(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::formats::gguf::GgufFile;

    #[test]
    fn the_reader_reads_back_what_the_writer_wrote() {
        let dir = std::env::temp_dir().join(format!("yaqa-gguf-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.gguf");
        let metadata = vec![
            (
                "general.architecture".to_string(),
                GgufValue::String("llama".into()),
            ),
            ("llama.block_count".into(), GgufValue::U32(2)),
            ("x.f".into(), GgufValue::F32(1e-5)),
            ("x.flag".into(), GgufValue::Bool(true)),
            (
                "x.tokens".into(),
                GgufValue::Array(vec![
                    GgufValue::String("a".into()),
                    GgufValue::String("bc".into()),
                ]),
            ),
            (
                "x.types".into(),
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-3)]),
            ),
            ("x.empty".into(), GgufValue::Array(vec![])),
            ("x.u64".into(), GgufValue::U64(u64::MAX)),
        ];
        let f32s: Vec<u8> = [1.5f32, -2.0, 0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
        q8.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let tensors = vec![
            TensorOut {
                name: "a".into(),
                dims: vec![3],
                type_id: 0,
                bytes: f32s,
            },
            TensorOut {
                name: "b".into(),
                dims: vec![32, 1],
                type_id: 8,
                bytes: q8,
            },
        ];
        write_gguf(&path, &metadata, &tensors).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.get("general.alignment"), Some(&GgufValue::U32(32)));
        for (k, v) in &metadata {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        assert_eq!(g.tensor_f32("a").unwrap(), (vec![3], vec![1.5, -2.0, 0.25]));
        let (shape, b) = g.tensor_f32("b").unwrap();
        assert_eq!(shape, vec![1, 32]);
        assert_eq!(b[0], -8.0);
        assert_eq!(g.info("b").unwrap().offset, 32, "a's 12 bytes padded to 32");
        assert_eq!(g.raw("b").unwrap().1, &tensors[1].bytes[..]);

        // Refusals: a tensor of the wrong size, a repeated key, the alignment given.
        let mut short = tensors.clone();
        short[1].bytes.pop();
        let e = encode(&metadata, &short).unwrap_err().to_string();
        assert!(e.contains("tensor b") && e.contains("33 bytes"), "{e}");
        let mut twice = metadata.clone();
        twice.push(("x.f".into(), GgufValue::F32(2.0)));
        assert!(
            encode(&twice, &tensors)
                .unwrap_err()
                .to_string()
                .contains("x.f")
        );
        let align = vec![("general.alignment".to_string(), GgufValue::U32(64))];
        assert!(encode(&align, &tensors).is_err());
        let mixed = vec![(
            "m".to_string(),
            GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]),
        )];
        assert!(
            encode(&mixed, &tensors)
                .unwrap_err()
                .to_string()
                .contains("mixes")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
