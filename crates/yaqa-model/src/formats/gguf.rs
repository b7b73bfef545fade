//! A GGUF v2/v3 reader (llama.cpp's checkpoint format) over a memory map, with exact f32 dequantization.
//!
//! The project's only real model ships as a GGUF file (fixture PROVENANCE.md), so this reader is how
//! the "original" f32 model comes to exist: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K and Q6_K
//! tensors (those of llama.cpp's Q4_K_M files among them) are expanded to f32 with the operations of
//! llama.cpp's `dequantize_row_*`, in its order, so the values are llama.cpp's own (checked against
//! gguf-py in `tests/ggml_reference.rs`).
//! llama.cpp permutes the rows of `attn_q`/`attn_k` for its interleaved RoPE; [`unpermute_rows`]
//! undoes that for the rotate-half RoPE that Hugging Face checkpoints and this crate use.
//!
//! Layout (all little-endian): magic `GGUF`, version `u32`, tensor count `u64`, metadata count `u64`,
//! the metadata key/values, the tensor infos (name, dims fastest-first, type, offset), padding to the
//! alignment (`general.alignment`, default 32), then the tensor data, each offset relative to its start.
//! [`GgufFile::open`] checks all of it before any tensor is read: a header that lies about a count, a
//! size or an offset is refused with the file and the tensor, never read around or wrapped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v as u64),
            Self::U16(v) => Some(v as u64),
            Self::U32(v) => Some(v as u64),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v as f64),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The tensor element types this reader knows (ggml's numbering), spelled as ggml spells them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4_K,
    Q6_K,
    Bf16,
}

impl GgmlType {
    /// Maps ggml's type id; `None` for types this reader cannot dequantize.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            14 => Self::Q6_K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q8_0 => (32, 34),
            Self::Q4_K => (256, 144),
            Self::Q6_K => (256, 210),
        }
    }
}

/// `(id, name, elements per block, bytes per block)` of every tensor type ggml defines (ggml.h's
/// `ggml_type`, block layouts from ggml-common.h), including those this reader cannot dequantize: the
/// sizes let [`GgufFile::open`] check every tensor's byte range, so that no tensor the model reads can
/// overlap one it does not.
const GGML_TYPES: [(u32, &str, u64, u64); 31] = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
];

/// `(name, elements per block, bytes per block)` of a ggml type id, `None` for ids ggml does not define
/// (or defined after this table was written).
fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == id)
        .map(|&(_, name, elems, bytes)| (name, elems, bytes))
}

/// `(name, elements per block, bytes per block)` of ggml type `id` (every type ggml defines, including
/// those this reader cannot dequantize), for writers that check a tensor's size.
pub fn ggml_type_size(id: u32) -> Option<(&'static str, u64, u64)> {
    ggml_type(id)
}

/// A human-readable name for a ggml type id, for error messages.
fn ggml_type_name(id: u32) -> String {
    let name = ggml_type(id).map_or("unknown", |t| t.0);
    format!("{name} (ggml type {id})")
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them, fastest-varying first (`ne0` = in-features of a matrix).
    pub dims: Vec<u64>,
    /// ggml's type id (kept raw so an unsupported type is reported when the tensor is read).
    pub type_id: u32,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The shape in row-major order (the reversed dimension list): `[out, in]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The number of elements, saturating at `u64::MAX` (which no file can hold). [`GgufFile::open`]
    /// refuses a tensor whose count overflows, so for the tensors of an open file this is exact.
    pub fn n_elements(&self) -> u64 {
        self.checked_elements().unwrap_or(u64::MAX)
    }

    /// The number of elements, or `None` when the product of the dimensions overflows `u64`.
    fn checked_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }
}

/// An open GGUF file: parsed header plus the memory map of the whole file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// Alignment of the data section and of every tensor in it.
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_start: u64,
}

/// A little-endian cursor over the mapped bytes that reports truncation with the field's name.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

/// The most entries a list read from the file is given room for before its entries are read; a longer
/// list grows as it is read, so a count that lies costs no memory up front.
const PREALLOCATE: u64 = 1 << 16;

/// The smallest size in the file of a metadata value of `type_id` (a string is its 8-byte length, an
/// array its 4-byte type and 8-byte count), or `None` for an unknown type.
fn min_value_size(type_id: u32) -> Option<usize> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(n as u64),
                len: self.bytes.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Bytes after the cursor.
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Checks that `count` items of at least `min_size` bytes each can follow the cursor, so that a count
    /// is never trusted with a loop or an allocation before the file could hold it. `what` names the
    /// count. A count the rest of the file cannot hold is a truncated file when the bytes it needs are
    /// a number (a cut download), and a corrupt header when even that overflows.
    fn fits(&self, count: u64, min_size: usize, what: impl Fn() -> String) -> Result<()> {
        if count <= (self.remaining() / min_size) as u64 {
            return Ok(());
        }
        let start = self.pos as u64;
        Err(
            match count
                .checked_mul(min_size as u64)
                .and_then(|n| n.checked_add(start))
            {
                Some(end) => ModelError::Truncated {
                    path: self.path.to_path_buf(),
                    what: format!("{} ({min_size} bytes each at least)", what()),
                    start,
                    end,
                    len: self.bytes.len() as u64,
                },
                None => ModelError::format(
                    self.path,
                    format!(
                        "{} cannot fit in any file ({min_size} bytes each at least)",
                        what()
                    ),
                ),
            },
        )
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        // A length within the file's size is left to `take`, which reports a cut file as truncated.
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.bytes.len())
            .ok_or_else(|| {
                ModelError::format(
                    self.path,
                    format!(
                        "{what}: string length {len} at byte {} is beyond the file ({} bytes)",
                        self.pos - 8,
                        self.bytes.len()
                    ),
                )
            })?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ModelError::format(self.path, format!("{what}: string is not UTF-8")))
    }

    fn value(&mut self, type_id: u32, what: &str, depth: usize) -> Result<GgufValue> {
        Ok(match type_id {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    return Err(ModelError::format(
                        self.path,
                        format!("{what}: arrays nested too deep"),
                    ));
                }
                let inner = self.u32(what)?;
                let count = self.u64(what)?;
                let Some(min_size) = min_value_size(inner) else {
                    return Err(ModelError::format(
                        self.path,
                        format!("{what}: array of unknown metadata value type {inner}"),
                    ));
                };
                // Checked before the loop below, which would otherwise run up to 2^64 rounds.
                self.fits(count, min_size, || {
                    format!("{what}: array of {count} values of type {inner}")
                })?;
                // Grown as the values are read: a value in memory is larger than in the file.
                let mut items = Vec::with_capacity(count.min(PREALLOCATE) as usize);
                for _ in 0..count {
                    items.push(self.value(inner, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(ModelError::format(
                    self.path,
                    format!("{what}: unknown metadata value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Maps and parses a GGUF file's header. Tensor data is read lazily by [`GgufFile::tensor_f32`].
    ///
    /// Every count, length and size read from the header is checked against the file before it is used
    /// (in checked arithmetic, so nothing wraps): counts and string and array lengths must fit in the
    /// bytes that are left, dimensions must multiply without overflow, and tensor data must lie in the
    /// file without overlapping another tensor's (see `check_layout`).
    ///
    /// **Errors**: I/O, bad magic or version, a truncated header, counts or lengths larger than the file,
    /// a repeated metadata key or tensor name, dimensions whose product overflows, tensors whose data
    /// lies past the end or overlaps another tensor's (naming both).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = super::open_file(&path)?;
        // SAFETY: the map is read-only and private to this process; checkpoint files are not modified
        // while a model is loaded (the same contract as every mmap-based checkpoint loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let mut cur = Cursor {
            path: &path,
            bytes: &mmap,
            pos: 0,
        };
        let magic = cur.array::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(ModelError::format(
                &path,
                format!("not a GGUF file (magic {magic:?})"),
            ));
        }
        let version = cur.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                &path,
                format!("GGUF version {version} (only 2 and 3 are supported)"),
            ));
        }
        let n_tensors = cur.u64("tensor count")?;
        let n_kv = cur.u64("metadata count")?;
        // Each metadata entry takes at least 13 bytes (key length, type, a one-byte value), each tensor
        // info at least 24 (name length, dimension count, type, offset): a count the rest of the file
        // cannot hold is refused before it sizes a loop or an allocation.
        for (count, what, min_size) in [
            (n_kv, "metadata count", 13),
            (n_tensors, "tensor count", 24),
        ] {
            cur.fits(count, min_size, || format!("{what} {count}"))?;
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = cur.string(&format!("metadata key #{i}"))?;
            let type_id = cur.u32(&format!("metadata {key} type"))?;
            let value = cur.value(type_id, &format!("metadata {key}"), 0)?;
            if metadata.contains_key(&key) {
                return Err(ModelError::format(
                    &path,
                    format!("metadata key {key} appears twice"),
                ));
            }
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(PREALLOCATE) as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = cur.string(&format!("tensor info #{i} name"))?;
            let n_dims = cur.u32(&format!("tensor {name} n_dims"))?;
            if n_dims > 8 {
                return Err(ModelError::format(
                    &path,
                    format!("tensor {name}: {n_dims} dimensions"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(cur.u64(&format!("tensor {name} dims"))?);
            }
            let type_id = cur.u32(&format!("tensor {name} type"))?;
            let offset = cur.u64(&format!("tensor {name} offset"))?;
            if !names.insert(name.clone()) {
                return Err(ModelError::format(
                    &path,
                    format!("tensor {name} appears twice"),
                ));
            }
            let info = GgufTensorInfo {
                name,
                dims,
                type_id,
                offset,
            };
            // The shape is used as `usize`s and their product as an element count.
            let countable = info
                .checked_elements()
                .is_some_and(|n| usize::try_from(n).is_ok())
                && info.dims.iter().all(|&d| usize::try_from(d).is_ok());
            if !countable {
                return Err(ModelError::format(
                    &path,
                    format!(
                        "tensor {}: dimensions {:?} hold more elements than a u64 counts",
                        info.name, info.dims
                    ),
                ));
            }
            tensors.push(info);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|&a| a > 0 && a.is_power_of_two())
                .ok_or_else(|| ModelError::format(&path, format!("general.alignment = {v:?}")))?,
        };
        let data_start = (cur.pos as u64)
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| {
                ModelError::format(
                    &path,
                    format!("general.alignment {alignment}: the data section starts beyond 2^64"),
                )
            })?;
        let gguf = Self {
            path,
            mmap,
            version,
            metadata,
            tensors,
            alignment,
            data_start,
        };
        gguf.check_layout()?;
        Ok(gguf)
    }

    /// Checks every tensor's offset and byte range and that no two ranges overlap.
    ///
    /// A tensor of a type ggml does not define has no known size: its offset must be aligned and inside
    /// the file, it cannot take part in the overlap check, and reading it is refused
    /// ([`ModelError::UnknownDtype`]). Every other tensor, dequantizable here or not, is checked in full,
    /// so that a tensor this crate reads cannot be decoded from another tensor's bytes.
    fn check_layout(&self) -> Result<()> {
        let mut ranges = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if !t.offset.is_multiple_of(self.alignment) {
                return Err(ModelError::format(
                    &self.path,
                    format!(
                        "tensor {}: offset {} is not {}-aligned",
                        t.name, t.offset, self.alignment
                    ),
                ));
            }
            match ggml_type(t.type_id) {
                // Bounds are checked here so that a truncated download fails at open, naming the tensor.
                Some((_, elems, bytes)) => {
                    let rows = GgmlType::from_id(t.type_id).is_some();
                    let (start, end) = self.byte_range(t, (elems, bytes), rows)?;
                    if end > start {
                        ranges.push((start, end, t.name.as_str()));
                    }
                }
                None => {
                    let start = self.data_start.checked_add(t.offset);
                    if start.is_none_or(|s| s > self.mmap.len() as u64) {
                        return Err(self.beyond(t, start, start));
                    }
                }
            }
        }
        ranges.sort_unstable();
        // The range that reaches furthest so far: sorted by start, a range overlaps an earlier one
        // exactly when it starts before that end.
        let mut furthest: Option<(usize, usize, &str)> = None;
        for &(start, end, name) in &ranges {
            if let Some((s, e, other)) = furthest
                && start < e
            {
                let at = |x: usize| x as u64 - self.data_start;
                return Err(ModelError::format(
                    &self.path,
                    format!(
                        "tensors {other} (data bytes {}..{}) and {name} (data bytes {}..{}) \
                             overlap",
                        at(s),
                        at(e),
                        at(start),
                        at(end)
                    ),
                ));
            }
            if furthest.is_none_or(|(_, e, _)| end > e) {
                furthest = Some((start, end, name));
            }
        }
        Ok(())
    }

    /// The error for a tensor whose data lies (partly) beyond the end of the file: `Truncated` with the
    /// byte range when it is a number, `BadFormat` when the range itself overflows `u64`.
    fn beyond(&self, t: &GgufTensorInfo, start: Option<u64>, end: Option<u64>) -> ModelError {
        match (start, end) {
            (Some(start), Some(end)) => ModelError::Truncated {
                path: self.path.clone(),
                what: format!("tensor {} data", t.name),
                start,
                end,
                len: self.mmap.len() as u64,
            },
            _ => ModelError::format(
                &self.path,
                format!(
                    "tensor {}: offset {} and dimensions {:?} put its data beyond 2^64 bytes",
                    t.name, t.offset, t.dims
                ),
            ),
        }
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A tensor's header entry by GGUF name.
    pub fn info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The absolute byte range of `t`, stored in blocks of `block_elems` elements in `block_bytes` bytes.
    /// With `rows`, each row (the first dimension) must fill whole blocks too, as dequantizing reads them
    /// row by row; sizing the range needs only the total.
    ///
    /// **Errors**: a count that does not fill whole blocks (or whose rows do not), a count or range that
    /// overflows, a range past the end of the file.
    fn byte_range(
        &self,
        t: &GgufTensorInfo,
        (block_elems, block_bytes): (u64, u64),
        rows: bool,
    ) -> Result<(usize, usize)> {
        let n = t
            .checked_elements()
            .ok_or_else(|| self.beyond(t, None, None))?;
        let row_misfit = t
            .dims
            .first()
            .is_some_and(|&d| !d.is_multiple_of(block_elems));
        if !n.is_multiple_of(block_elems) || rows && row_misfit {
            return Err(ModelError::format(
                &self.path,
                format!(
                    "tensor {}: {} elements (row {:?}) do not fill whole {}-element blocks",
                    t.name,
                    n,
                    t.dims.first(),
                    block_elems
                ),
            ));
        }
        let bytes = (n / block_elems).checked_mul(block_bytes);
        let start = self.data_start.checked_add(t.offset);
        let end = start.zip(bytes).and_then(|(s, b)| s.checked_add(b));
        match (start, end) {
            // Both at most the file's length, so they fit usize.
            (Some(s), Some(e)) if e <= self.mmap.len() as u64 => Ok((s as usize, e as usize)),
            _ => Err(self.beyond(t, start, end)),
        }
    }

    /// A tensor's header entry and its bytes as stored (any type ggml defines), for copying it unchanged.
    ///
    /// **Errors**: a missing tensor, a type ggml does not define, data beyond the file.
    pub fn raw(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8])> {
        let t = self.info(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let (_, elems, bytes) = ggml_type(t.type_id).ok_or_else(|| ModelError::UnknownDtype {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: ggml_type_name(t.type_id),
        })?;
        let (s, e) = self.byte_range(t, (elems, bytes), false)?;
        let data = self
            .mmap
            .get(s..e)
            .ok_or_else(|| self.beyond(t, Some(s as u64), Some(e as u64)))?;
        Ok((t, data))
    }

    /// Dequantizes a tensor (by GGUF name) to f32, returning its row-major shape and values.
    ///
    /// **Errors**: missing tensor, unsupported type, truncated data.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.info(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let ty = GgmlType::from_id(t.type_id).ok_or_else(|| ModelError::UnknownDtype {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: ggml_type_name(t.type_id),
        })?;
        let (block_elems, block_bytes) = ty.block();
        let (s, e) = self.byte_range(t, (block_elems as u64, block_bytes as u64), true)?;
        let bytes = self
            .mmap
            .get(s..e)
            .ok_or_else(|| self.beyond(t, Some(s as u64), Some(e as u64)))?;
        let values = dequantize(ty, bytes);
        crate::formats::pages::release(&self.mmap, s, e);
        Ok((t.shape(), values))
    }
}

/// Expands a whole number of blocks of `ty` to f32 (exact for every supported type).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (block_elems, block_bytes) = ty.block();
    let n_blocks = bytes.len() / block_bytes;
    let mut out = vec![0.0f32; n_blocks * block_elems];
    // Blocks are independent; a chunk of 256 blocks amortises the task overhead.
    let per_task = 256;
    out.par_chunks_mut(block_elems * per_task)
        .zip(bytes.par_chunks(block_bytes * per_task))
        .for_each(|(o, b)| {
            for (ob, bb) in o.chunks_mut(block_elems).zip(b.chunks(block_bytes)) {
                dequantize_block(ty, bb, ob);
            }
        });
    out
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn dequantize_block(ty: GgmlType, b: &[u8], o: &mut [f32]) {
    match ty {
        GgmlType::F32 => o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => o[0] = f16_at(b, 0),
        GgmlType::Bf16 => o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                o[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                o[j] = d * ((q & 0x0f) as i32 - 8) as f32;
                o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
        GgmlType::Q4_1 => {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            for j in 0..16 {
                let q = b[4 + j];
                o[j] = d * (q & 0x0f) as f32 + m;
                o[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let q = b[6 + j] as u32;
                let lo = (q & 0x0f) | (((qh >> j) << 4) & 0x10);
                let hi = (q >> 4) | ((qh >> (j + 12)) & 0x10);
                o[j] = (lo as i32 - 16) as f32 * d;
                o[j + 16] = (hi as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q4_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales: &[u8; 12] = b[4..16].try_into().expect("12 bytes");
            // Runs of 64: sub-blocks 2r (low nibbles) and 2r + 1 (high nibbles) of 32 bytes.
            for (r, qs) in b[16..144].chunks_exact(32).enumerate() {
                let (sc0, m0) = k4_scale_min(2 * r, scales);
                let (sc1, m1) = k4_scale_min(2 * r + 1, scales);
                let (d0, o0) = (d * sc0 as f32, dmin * m0 as f32);
                let (d1, o1) = (d * sc1 as f32, dmin * m1 as f32);
                for (l, &q) in qs.iter().enumerate() {
                    o[64 * r + l] = d0 * (q & 0x0f) as f32 - o0;
                    o[64 * r + 32 + l] = d1 * (q >> 4) as f32 - o1;
                }
            }
        }
        GgmlType::Q6_K => {
            // ql[128], qh[64], 16 signed 8-bit scales, float16 d; two halves of 128 weights.
            let d = f16_at(b, 208);
            for h in 0..2 {
                let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..128 + 32 * h + 32]);
                let sc = &b[192 + 8 * h..192 + 8 * h + 8];
                let y = &mut o[128 * h..128 * h + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q = |low: u8, shift: u32| {
                        ((low as i32) | ((((qh[l] >> shift) & 3) as i32) << 4)) - 32
                    };
                    let qs = [
                        q(ql[l] & 0x0f, 0),
                        q(ql[l + 32] & 0x0f, 2),
                        q(ql[l] >> 4, 4),
                        q(ql[l + 32] >> 4, 6),
                    ];
                    for (k, &v) in qs.iter().enumerate() {
                        y[l + 32 * k] = d * (sc[is + 2 * k] as i8) as f32 * v as f32;
                    }
                }
            }
        }
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of `Q4_K` sub-block `j` from the block's 12
/// packed bytes.
fn k4_scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Undoes llama.cpp's Q/K row permutation on a row-major `[n_head · head_dim, cols]` matrix (or a bias,
/// `cols = 1`): HF row `h·head_dim + k·head_dim/2 + i` = GGUF row `h·head_dim + 2i + k` (PROVENANCE.md).
///
/// **Errors**: rows not equal to `n_head · head_dim`, or odd `head_dim`.
pub fn unpermute_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    head_dim: usize,
) -> std::result::Result<Vec<f32>, String> {
    if n_head.checked_mul(head_dim) != Some(rows)
        || !head_dim.is_multiple_of(2)
        || rows.checked_mul(cols) != Some(data.len())
    {
        return Err(format!(
            "cannot un-permute {rows}×{cols} ({} values) as {n_head} heads of {head_dim}",
            data.len()
        ));
    }
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..n_head {
        for k in 0..2 {
            for i in 0..half {
                let dst = h * head_dim + k * half + i;
                let src = h * head_dim + 2 * i + k;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// The Hugging Face row that llama.cpp's Q/K permutation puts at GGUF row `row` of a head-major matrix
/// with heads of `head_dim` rows (even): GGUF row `h·head_dim + 2i + k` holds HF row
/// `h·head_dim + k·head_dim/2 + i`. [`unpermute_rows`] undoes the permutation, [`permute_rows`] applies
/// it, and `export --format gguf` reorders rows of blocks with it.
pub fn hf_row_of(row: usize, head_dim: usize) -> usize {
    let (h, w) = (row / head_dim, row % head_dim);
    h * head_dim + (w % 2) * (head_dim / 2) + w / 2
}

/// Applies llama.cpp's Q/K row permutation to a row-major `[n_head · head_dim, cols]` matrix (HF order
/// in, GGUF order out): the inverse of [`unpermute_rows`].
///
/// **Errors**: as [`unpermute_rows`].
pub fn permute_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    head_dim: usize,
) -> std::result::Result<Vec<f32>, String> {
    if n_head.checked_mul(head_dim) != Some(rows)
        || !head_dim.is_multiple_of(2)
        || rows.checked_mul(cols) != Some(data.len())
    {
        return Err(format!(
            "cannot permute {rows}×{cols} ({} values) as {n_head} heads of {head_dim}",
            data.len()
        ));
    }
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        let src = hf_row_of(r, head_dim);
        out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

/// Maps a GGUF tensor name of a Llama-family model to its Hugging Face name.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    if let Some(&(_, hf)) = TOP_NAMES.iter().find(|(g, _)| *g == name) {
        return Some(hf.into());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let &(_, hf_tail) = BLOCK_NAMES.iter().find(|(g, _)| *g == tail)?;
    Some(format!("model.layers.{layer}.{hf_tail}"))
}

/// The inverse of [`gguf_to_hf_name`]: the GGUF name of a Hugging Face tensor name.
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    if let Some(&(g, _)) = TOP_NAMES.iter().find(|(_, h)| *h == name) {
        return Some(g.into());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let &(g_tail, _) = BLOCK_NAMES.iter().find(|(_, h)| *h == tail)?;
    Some(format!("blk.{layer}.{g_tail}"))
}

/// GGUF and Hugging Face names of the tensors outside the blocks.
const TOP_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// GGUF and Hugging Face names of a block's tensors, after `blk.N.` and `model.layers.N.`.
const BLOCK_NAMES: [(&str, &str); 14] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "blk.3.attn_q.bias",
            "blk.29.ffn_down.weight",
        ] {
            let hf = gguf_to_hf_name(g).unwrap();
            assert_eq!(hf_to_gguf_name(&hf).as_deref(), Some(g), "{hf}");
        }
        assert_eq!(hf_to_gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn names_round_trip_the_layer_index() {
        assert_eq!(
            gguf_to_hf_name("blk.17.ffn_down.weight").as_deref(),
            Some("model.layers.17.mlp.down_proj.weight")
        );
        assert_eq!(
            gguf_to_hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(gguf_to_hf_name("blk.x.ffn_down.weight"), None);
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp's permute: w.reshape(n_head, 2, half, cols).swapaxes(1, 2) — row h·hd + 2i + k of the
        // GGUF holds HF row h·hd + k·half + i. Build the GGUF order from a known HF matrix and undo it.
        let (n_head, hd, cols) = (3, 8, 2);
        let rows = n_head * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut gguf = vec![0.0f32; hf.len()];
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for k in 0..2 {
                    let src = h * hd + k * hd / 2 + i;
                    let dst = h * hd + 2 * i + k;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf);
        assert_eq!(unpermute_rows(&gguf, rows, cols, n_head, hd).unwrap(), hf);
        assert!(unpermute_rows(&gguf, rows, cols, 4, hd).is_err());
        // The writer's direction is the same permutation, so the two are inverses.
        assert_eq!(permute_rows(&hf, rows, cols, n_head, hd).unwrap(), gguf);
        assert!(permute_rows(&hf, rows, cols, n_head, hd + 1).is_err());
    }

    #[test]
    fn dequantized_types_have_the_sizes_of_the_ggml_table() {
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
            GgmlType::Bf16,
        ] {
            let id = (0..64)
                .find(|&id| GgmlType::from_id(id) == Some(ty))
                .unwrap();
            let (_, elems, bytes) = ggml_type(id).unwrap();
            assert_eq!(ty.block(), (elems as usize, bytes as usize), "{ty:?}");
        }
        // Every block size follows from the layouts of ggml-common.h; spot checks of the k-quants.
        assert_eq!(ggml_type(12), Some(("Q4_K", 256, 2 + 2 + 12 + 128)));
        assert_eq!(ggml_type(14), Some(("Q6_K", 256, 128 + 64 + 16 + 2)));
        assert_eq!(ggml_type(4), None);
    }

    #[test]
    fn block_formats_dequantize_exactly() {
        // Q4_1: d = 0.5, m = -1; low nibbles j, high nibbles 15 - j.
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let v = dequantize(GgmlType::Q4_1, &b);
        assert_eq!(v.len(), 32);
        for j in 0..16 {
            assert_eq!(v[j], 0.5 * j as f32 - 1.0);
            assert_eq!(v[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
        // Q4_0: d = 2, q - 8.
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        for j in 0..16u8 {
            b.push(j | (j << 4));
        }
        let v = dequantize(GgmlType::Q4_0, &b);
        assert_eq!(v[3], 2.0 * (3.0 - 8.0));
        assert_eq!(v[19], 2.0 * (3.0 - 8.0));
        // Q8_0: d = 0.25, signed bytes.
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        for j in 0..32i32 {
            b.push((j - 16) as i8 as u8);
        }
        let v = dequantize(GgmlType::Q8_0, &b);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[31], 3.75);
        // BF16 and F16 scalars.
        assert_eq!(
            dequantize(GgmlType::Bf16, &bf16::from_f32(1.5).to_le_bytes()),
            vec![1.5]
        );
        assert_eq!(
            dequantize(GgmlType::F16, &f16::from_f32(-0.125).to_le_bytes()),
            vec![-0.125]
        );
    }
}
