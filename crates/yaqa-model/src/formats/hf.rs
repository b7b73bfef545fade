//! Hugging Face checkpoint folders: memory-mapped safetensors in (single or sharded), f32 safetensors out.
//!
//! The safetensors header is parsed here rather than by the `safetensors` crate so that a truncated
//! shard or a bad dtype is reported with the file *and* the tensor (the crate only says the buffer is
//! incomplete). It refuses the same files that crate refuses (see [`SafetensorsFile::open`]), with every
//! size computed in checked arithmetic: a data offset near 2^64 must not wrap around onto the header's
//! own bytes and be read as a tensor. Writing goes through `safetensors::serialize_to_file`, into a
//! temporary file in the target folder that is renamed into place, so a failed conversion leaves no
//! half-written checkpoint.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, View};
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::transformer::config::ModelConfig;
use crate::transformer::weights::{Model, TensorSource};

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct StTensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A memory-mapped `.safetensors` file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    pub tensors: BTreeMap<String, StTensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// The largest JSON header read: the `safetensors` crate's own limit (`MAX_HEADER_SIZE` in 0.6), so that a
/// header length read from a damaged file is refused before anything of that size is looked at.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Bits per element of every dtype the `safetensors` crate (0.6) knows; `None` for any other name, which
/// that crate refuses too (its `Dtype` enum does not deserialize it).
fn dtype_bits(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 64,
        "F32" | "I32" | "U32" => 32,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 8,
        "F6_E2M3" | "F6_E3M2" => 6,
        "F4" => 4,
        _ => return None,
    })
}

/// The top-level entries of a safetensors header in file order, repeated keys kept: a `serde_json::Value`
/// keeps only the last of two equal keys, which would hide a tensor entry instead of refusing the file.
struct HeaderEntries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for HeaderEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HeaderEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(HeaderEntries(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// A list of non-negative integers that fit `usize`, or `None`.
fn usizes(v: Option<&Value>) -> Option<Vec<usize>> {
    v?.as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect()
}

/// Checks that the tensors' byte ranges tile the data section (`data_len` bytes from `header_end`) as the
/// `safetensors` crate requires: sorted by offsets, the first begins at 0, each begins where the one
/// before ends, and the last ends at the end of the file. An overlap would hand one tensor's bytes to
/// another as its values; a gap or trailing bytes are data that no tensor accounts for.
fn check_layout(
    path: &Path,
    tensors: &BTreeMap<String, StTensorInfo>,
    header_end: usize,
    data_len: usize,
) -> Result<()> {
    let offsets = |t: &StTensorInfo| (t.start - header_end, t.end - header_end);
    let mut ranges: Vec<(usize, usize, &str)> = tensors
        .iter()
        .map(|(name, t)| {
            let (b, e) = offsets(t);
            (b, e, name.as_str())
        })
        .collect();
    ranges.sort_unstable();
    let mut covered = 0;
    let mut previous: Option<(usize, usize, &str)> = None;
    for &(begin, end, name) in &ranges {
        match previous {
            Some((b, e, prev)) if begin < covered => {
                return Err(ModelError::format(
                    path,
                    format!(
                        "tensors {prev} (data_offsets [{b}, {e}]) and {name} (data_offsets \
                         [{begin}, {end}]) overlap"
                    ),
                ));
            }
            _ if begin > covered => {
                let after = previous.map_or_else(
                    || "the start of the data section".to_string(),
                    |(_, _, prev)| format!("tensor {prev}"),
                );
                return Err(ModelError::format(
                    path,
                    format!(
                        "bytes {covered}..{begin} of the data section, between {after} and tensor \
                         {name}, belong to no tensor"
                    ),
                ));
            }
            _ => {}
        }
        covered = end;
        previous = Some((begin, end, name));
    }
    if covered != data_len {
        let last = previous.map_or_else(
            || "there are no tensors".to_string(),
            |(_, _, prev)| format!("the last one, {prev}, ends at {covered}"),
        );
        return Err(ModelError::format(
            path,
            format!(
                "the data section has {data_len} bytes but {last}: {} trailing bytes belong to no \
                 tensor",
                data_len - covered
            ),
        ));
    }
    Ok(())
}

impl SafetensorsFile {
    /// Maps a file and validates its header as the `safetensors` crate (0.6) does, so that yaqa reads
    /// exactly the files the reference reader reads: a header of at most 100 MB that lies in the file,
    /// known dtypes, every tensor's byte range matching its shape and dtype (all sizes computed with
    /// checked arithmetic) and lying in the data section, and the ranges covering the data section
    /// contiguously, without overlaps or gaps. A tensor name may appear only once.
    ///
    /// **Errors**: [`ModelError::Truncated`] for a header or tensor that runs past the end of the file,
    /// [`ModelError::UnknownDtype`] for a dtype safetensors does not define, and [`ModelError::BadFormat`]
    /// for everything else; every error names the file and, where there is one, the tensor (both tensors
    /// of an overlap).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = super::open_file(&path)?;
        // SAFETY: read-only private map; checkpoints are not modified while loaded.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let len = mmap.len() as u64;
        let truncated = |what: String, start: u64, end: u64| ModelError::Truncated {
            path: path.clone(),
            what,
            start,
            end,
            len,
        };
        let Some(n) = mmap.get(..8) else {
            return Err(truncated("header length".into(), 0, 8));
        };
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(n);
        let n = u64::from_le_bytes(n8);
        let header_end = n
            .checked_add(8)
            .filter(|&e| e <= len)
            .ok_or_else(|| truncated("JSON header".into(), 8, n.saturating_add(8)))?;
        if n > MAX_HEADER_LEN {
            return Err(ModelError::format(
                &path,
                format!(
                    "JSON header of {n} bytes: safetensors headers are at most {MAX_HEADER_LEN}"
                ),
            ));
        }
        // At most the file's length, so it fits usize.
        let header_end = header_end as usize;
        let data_len = mmap.len() - header_end;
        let HeaderEntries(entries) = serde_json::from_slice(&mmap[8..header_end])
            .map_err(|e| ModelError::format(&path, format!("invalid safetensors header: {e}")))?;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        let mut saw_metadata = false;
        for (name, entry) in entries {
            if name == "__metadata__" {
                let bad = |why: String| ModelError::format(&path, format!("__metadata__: {why}"));
                if std::mem::replace(&mut saw_metadata, true) {
                    return Err(bad("appears twice in the header".into()));
                }
                match entry {
                    Value::Null => {}
                    Value::Object(m) => {
                        for (k, v) in m {
                            let Value::String(v) = v else {
                                return Err(bad(format!("value of {k:?} is {v}, not a string")));
                            };
                            metadata.insert(k, v);
                        }
                    }
                    other => return Err(bad(format!("{other} is not an object of strings"))),
                }
                continue;
            }
            let bad = |why: String| ModelError::format(&path, format!("tensor {name}: {why}"));
            if tensors.contains_key(&name) {
                return Err(bad("appears twice in the header".into()));
            }
            let dtype = entry
                .get("dtype")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no dtype".into()))?
                .to_string();
            let Some(bits) = dtype_bits(&dtype) else {
                return Err(ModelError::UnknownDtype {
                    path: path.clone(),
                    tensor: name,
                    dtype: format!("{dtype} (not a safetensors dtype)"),
                });
            };
            let shape = usizes(entry.get("shape"))
                .ok_or_else(|| bad("shape is not a list of non-negative integers".into()))?;
            // Checked left to right, as the safetensors crate does.
            let bytes = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .and_then(|elements| elements.checked_mul(bits))
                .ok_or_else(|| {
                    bad(format!(
                        "shape {shape:?} of {dtype} holds more than {} bytes",
                        usize::MAX
                    ))
                })?;
            if !bytes.is_multiple_of(8) {
                return Err(bad(format!(
                    "shape {shape:?} of {dtype} is not a whole number of bytes"
                )));
            }
            let bytes = bytes / 8;
            let offsets = usizes(entry.get("data_offsets"))
                .filter(|o| o.len() == 2)
                .ok_or_else(|| bad("data_offsets is not a pair of non-negative integers".into()))?;
            let (begin, end) = (offsets[0], offsets[1]);
            if end < begin {
                return Err(bad(format!(
                    "data_offsets [{begin}, {end}] end before they begin"
                )));
            }
            if end - begin != bytes {
                return Err(bad(format!(
                    "data_offsets [{begin}, {end}] hold {} bytes, but shape {shape:?} of {dtype} is \
                     {bytes} bytes",
                    end - begin
                )));
            }
            if end > data_len {
                // Offsets past any file (their absolute position overflows) are a corrupt header, not
                // a short download: adding them to the header's end would wrap around onto the header.
                let (Some(start), Some(stop)) = (
                    (header_end as u64).checked_add(begin as u64),
                    (header_end as u64).checked_add(end as u64),
                ) else {
                    return Err(bad(format!(
                        "data_offsets [{begin}, {end}] lie beyond the end of any file (the data \
                         section has {data_len} bytes)"
                    )));
                };
                return Err(truncated(
                    format!("tensor {name} data (data_offsets [{begin}, {end}])"),
                    start,
                    stop,
                ));
            }
            // `end ≤ data_len`, so both sums are at most the file's length.
            tensors.insert(
                name,
                StTensorInfo {
                    dtype,
                    shape,
                    start: header_end + begin,
                    end: header_end + end,
                },
            );
        }
        check_layout(&path, &tensors, header_end, data_len)?;
        Ok(Self {
            path,
            mmap,
            tensors,
            metadata,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of tensor `name` (entry `t`). [`SafetensorsFile::open`] checked every range, but
    /// `tensors` is public, so an entry edited since is checked again rather than trusted.
    fn bytes_of(&self, name: &str, t: &StTensorInfo) -> Result<&[u8]> {
        self.mmap
            .get(t.start..t.end)
            .ok_or_else(|| ModelError::Truncated {
                path: self.path.clone(),
                what: format!("tensor {name} data"),
                start: t.start as u64,
                end: t.end as u64,
                len: self.mmap.len() as u64,
            })
    }

    /// The header entry of tensor `name`.
    ///
    /// **Errors**: [`ModelError::MissingTensor`] naming the file.
    fn info(&self, name: &str) -> Result<&StTensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// A tensor converted to f32 (from F32, F16 or BF16).
    ///
    /// **Errors**: missing tensor; any other dtype ([`ModelError::UnknownDtype`]).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.info(name)?;
        let bytes = self.bytes_of(name, t)?;
        let data: Vec<f32> = match t.dtype.as_str() {
            "F32" => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "F16" => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            "BF16" => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnknownDtype {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    dtype: other.to_string(),
                });
            }
        };
        crate::formats::pages::release(&self.mmap, t.start, t.end);
        Ok((t.shape.clone(), data))
    }

    /// The raw little-endian bytes of a tensor with its header entry, checking its dtype.
    ///
    /// **Errors**: missing tensor, or a dtype other than `dtype` ([`ModelError::UnknownDtype`]).
    pub fn raw(&self, name: &str, dtype: &str) -> Result<(&StTensorInfo, &[u8])> {
        let t = self.info(name)?;
        if t.dtype != dtype {
            return Err(ModelError::UnknownDtype {
                path: self.path.clone(),
                tensor: name.to_string(),
                dtype: format!("{} (expected {dtype})", t.dtype),
            });
        }
        Ok((t, self.bytes_of(name, t)?))
    }

    /// A tensor stored as I64 (token ids in reference fixtures).
    pub fn tensor_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let t = self.info(name)?;
        if t.dtype != "I64" {
            return Err(ModelError::UnknownDtype {
                path: self.path.clone(),
                tensor: name.to_string(),
                dtype: format!("{} (expected I64)", t.dtype),
            });
        }
        let data = self
            .bytes_of(name, t)?
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                i64::from_le_bytes(a)
            })
            .collect();
        Ok((t.shape.clone(), data))
    }
}

/// A Hugging Face checkpoint folder: `config.json` plus `model.safetensors` or a sharded index.
#[derive(Debug)]
pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl HfCheckpoint {
    /// Opens a folder: reads `config.json`, maps `model.safetensors` or every shard named in
    /// `model.safetensors.index.json`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config = ModelConfig::from_hf_json_file(dir.join("config.json"))?;
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let mut files = Vec::new();
        let mut index = HashMap::new();
        if index_path.exists() {
            let text = super::read_text(&index_path)?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| ModelError::format(&index_path, "no weight_map object"))?;
            let mut shard_of: BTreeMap<String, usize> = BTreeMap::new();
            for (name, shard) in map {
                let shard = shard
                    .as_str()
                    .filter(|s| !s.contains('/') && !s.contains('\\'))
                    .ok_or_else(|| {
                        ModelError::format(&index_path, format!("bad shard for {name}"))
                    })?;
                let next = shard_of.len();
                let i = *shard_of.entry(shard.to_string()).or_insert(next);
                index.insert(name.clone(), i);
            }
            let mut ordered: Vec<(usize, String)> =
                shard_of.into_iter().map(|(s, i)| (i, s)).collect();
            ordered.sort();
            for (_, shard) in ordered {
                files.push(SafetensorsFile::open(dir.join(shard))?);
            }
            // Every tensor the index promises must be in its shard.
            for (name, &i) in &index {
                if !files[i].tensors.contains_key(name) {
                    return Err(ModelError::MissingTensor {
                        path: files[i].path().to_path_buf(),
                        tensor: name.clone(),
                    });
                }
            }
        } else {
            let f = SafetensorsFile::open(&single)?;
            for name in f.tensors.keys() {
                index.insert(name.clone(), 0);
            }
            files.push(f);
        }
        Ok(Self {
            dir,
            config,
            files,
            index,
        })
    }

    /// The safetensors files of the checkpoint, in shard order.
    pub fn shard_paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path().to_path_buf()).collect()
    }

    /// The mapped safetensors files, in shard order.
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// Loads the whole model in f32.
    pub fn load_model(&self) -> Result<Model<f32>> {
        Model::load(self.config.clone(), self)
    }
}

impl TensorSource for HfCheckpoint {
    fn file_of(&self, name: &str) -> PathBuf {
        match self.index.get(name) {
            Some(&i) => self.files[i].path().to_path_buf(),
            None if self.files.len() == 1 => self.files[0].path().to_path_buf(),
            None => self.dir.join("model.safetensors.index.json"),
        }
    }

    fn load(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        match self.index.get(name) {
            None => Ok(None),
            Some(&i) => self.files[i].tensor_f32(name).map(Some),
        }
    }

    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>> {
        Ok(self
            .index
            .get(name)
            .and_then(|&i| self.files[i].tensors.get(name))
            .map(|t| t.shape.clone()))
    }

    fn last_block(&self) -> Option<(usize, String)> {
        crate::transformer::weights::last_block(
            self.index.keys().map(String::as_str),
            "model.layers.",
        )
    }

    fn layer_count_key(&self) -> String {
        format!(
            "num_hidden_layers in {}",
            self.dir.join("config.json").display()
        )
    }
}

/// A tensor as raw little-endian bytes, for the safetensors writer (factor and quantized-model files).
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// An F64 vector.
    pub fn f64s(values: &[f64]) -> Self {
        Self {
            dtype: Dtype::F64,
            shape: vec![values.len()],
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An F32 tensor of `shape`.
    pub fn f32s(shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A tensor of `shape` rounded to a 16-bit float type (to nearest, ties to even).
    pub fn half(shape: Vec<usize>, values: &[f32], half: Half) -> Self {
        let (dtype, bytes) = match half {
            Half::Bf16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            Half::F16 => (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
        };
        Self {
            dtype,
            shape,
            bytes,
        }
    }
}

/// The 16-bit float types exported checkpoints store their tensors in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// bfloat16: f32's exponent range, 8 significant bits.
    Bf16,
    /// IEEE float16: 11 significant bits, `|x| ≤ 65504`.
    F16,
}

/// Every tensor of `model` under its Hugging Face name ([`Model::hf_tensors`]), rounded to `half`, except
/// those whose name `skip` accepts (the exports that replace the quantized linear layers skip them).
pub fn half_tensors(
    model: &Model<f32>,
    half: Half,
    skip: impl Fn(&str) -> bool,
) -> Result<Vec<(String, RawTensor)>> {
    Ok(model
        .hf_tensors()?
        .into_iter()
        .filter(|(name, _, _)| !skip(name))
        .map(|(name, shape, data)| (name, RawTensor::half(shape, data, half)))
        .collect())
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` and one metadata entry `key → value` as a safetensors file, atomically (temporary file
/// in the same folder, then rename). The output depends only on the arguments, byte for byte.
///
/// **Errors**: [`ModelError::Write`] naming `path`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, RawTensor)],
    key: &str,
    value: &str,
) -> Result<()> {
    write_atomic(path, |tmp| {
        let views = tensors.iter().map(|(name, t)| (name.clone(), t));
        let mut meta = HashMap::new();
        meta.insert(key.to_string(), value.to_string());
        safetensors::serialize_to_file(views, Some(meta), tmp).map_err(safetensors_io)
    })
}

/// The I/O error inside a safetensors writer's error; its other errors (a view whose bytes do not
/// match its shape) are bugs in the caller, carried as I/O errors with their message.
fn safetensors_io(e: safetensors::SafeTensorError) -> std::io::Error {
    match e {
        safetensors::SafeTensorError::IoError(e) => e,
        other => std::io::Error::other(format!("serializing safetensors: {other}")),
    }
}

/// An f32 tensor for the safetensors writer.
struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes `value` as pretty-printed JSON to `path`, atomically ([`write_atomic`]).
///
/// **Errors**: [`ModelError::Write`] naming `path`.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| ModelError::format(path, e.to_string()))?;
    write_atomic(path, |tmp| std::fs::write(tmp, &text))
}

/// Runs `write` on a temporary file in `path`'s folder, then renames it to `path`, so that readers never
/// see half a file and a failed write leaves what was there. The temporary name is a detail: every error
/// names `path`, the file the user asked for.
///
/// **Errors**: [`ModelError::Write`] naming `path`, for an I/O error of `write` or of the rename.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    remove_stale_temporaries(dir, &name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        // Best effort: the error already names the real problem.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|source| ModelError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes the temporaries `.{name}.tmp-<pid>` in `dir` that [`write_atomic`] left when its process was
/// killed (SIGKILL leaves no chance to clean up), so that the rerun after a kill leaves the folder as an
/// uninterrupted run does. A temporary whose process is alive (another writer of the same file) is left
/// alone, and so is everything where processes cannot be looked up (no `/proc`).
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let procs = Path::new("/proc");
    if !procs.join("self").exists() {
        return;
    }
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !procs.join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `model` as a Hugging Face folder (`config.json` + f32 `model.safetensors`) that transformers
/// loads directly; each file is written to a temporary name and renamed, so readers never see half a file.
///
/// **Errors**: the folder cannot be made, or a file cannot be written (named).
pub fn write_hf(model: &Model<f32>, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Write {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let weights = dir.join("model.safetensors");
    let tensors = model.hf_tensors()?;
    write_atomic(&weights, |tmp| {
        let views = tensors
            .into_iter()
            .map(|(name, shape, data)| (name, F32View { shape, data }));
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        safetensors::serialize_to_file(views, Some(meta), tmp).map_err(safetensors_io)
    })?;
    let config = dir.join("config.json");
    let text = serde_json::to_string_pretty(&model.config.to_hf_json())
        .map_err(|e| ModelError::Input(format!("formatting config.json: {e}")))?;
    write_atomic(&config, |tmp| std::fs::write(tmp, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rerun's write removes the temporary a killed writer of the same file left (its process gone),
    /// and keeps those of live processes and of other files.
    #[test]
    fn writes_remove_the_temporaries_of_killed_writers() {
        let dir = std::env::temp_dir().join(format!("yaqa-stale-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Above Linux's largest pid (2^22), so no process has it.
        let dead = dir.join(".out.json.tmp-4194305");
        // Process 1 is alive in any Linux system or container.
        let live = dir.join(".out.json.tmp-1");
        let other = dir.join(".other.json.tmp-4194305");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"half").unwrap();
        }
        write_json(&dir.join("out.json"), &serde_json::json!({"a": 1})).unwrap();
        let on_linux = Path::new("/proc/self").exists();
        assert_eq!(dead.exists(), !on_linux, "the killed writer's temporary");
        assert!(live.exists() && other.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An output that cannot be written is named as the user gave it, as an I/O error: the temporary
    /// file it goes through is a detail, and the failure is not the format's.
    #[test]
    fn write_errors_name_the_output() {
        let dir = std::env::temp_dir().join(format!("yaqa-hf-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("missing").join("y.safetensors");
        let tensors = [("t".to_string(), RawTensor::f32s(vec![2], &[1.0, 2.0]))];
        let err = write_safetensors(&out, &tensors, "format", "pt").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Write { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("cannot write {}: ", out.display()))
                && msg.contains("No such file or directory"),
            "{msg}"
        );
        assert!(
            !msg.contains(".tmp-") && !msg.contains("bad format"),
            "{msg}"
        );

        // A folder in the way of the rename: still the output's name, and no temporary file left.
        let taken = dir.join("taken");
        std::fs::create_dir_all(taken.join("inside")).unwrap();
        let msg = write_safetensors(&taken, &tensors, "format", "pt")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("cannot write {}: ", taken.display())),
            "{msg}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
