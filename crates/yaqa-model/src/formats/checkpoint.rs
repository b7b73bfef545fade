//! Opening "a model" from whatever the user points at (a GGUF file or a Hugging Face folder), with a
//! fingerprint that ties factor and quantized files to the weights they were made from.
//!
//! The fingerprint is the SHA-256 of the bytes that describe the weights, and of a sample of the weights,
//! without reading them all: for GGUF the whole header up to the start of the tensor data (metadata,
//! tensor names, types, shapes and offsets); for a Hugging Face folder `config.json` followed by every
//! safetensors file's JSON header in shard order; then, for every tensor, its first, middle and last
//! [`SAMPLE`] bytes. The sample is what tells apart two checkpoints of one layout (a fine-tune and its
//! base, two seeds of a synthetic model), which the headers alone do not. It costs three small reads per
//! tensor instead of hashing gigabytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::hf::HfCheckpoint;
use crate::transformer::config::ModelConfig;
use crate::transformer::tokenizer::Tokenizer;
use crate::transformer::weights::{GgufSource, Model, TensorSource};

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub model: Model<f32>,
    /// Hex SHA-256 of the checkpoint's headers (see the module docs).
    pub fingerprint: String,
}

fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|f| f.take(len).read_to_end(&mut buf))
        .map_err(|e| ModelError::io(path, e))?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes the fingerprint takes from the start, the middle and the end of every tensor.
pub const SAMPLE: u64 = 64;

/// Hashes the first, middle and last [`SAMPLE`] bytes of each of `ranges` (absolute byte ranges of
/// `path`, already checked against the file by its reader).
fn hash_samples(hash: &mut Sha256, path: &Path, ranges: &[(u64, u64)]) -> Result<()> {
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut buf = vec![0u8; SAMPLE as usize];
    for &(start, end) in ranges {
        let len = end.saturating_sub(start);
        let take = len.min(SAMPLE);
        let middle = start + (len - take) / 2;
        for at in [start, middle, end - take] {
            let buf = &mut buf[..take as usize];
            file.seek(SeekFrom::Start(at))
                .and_then(|_| file.read_exact(buf))
                .map_err(|e| ModelError::io(path, e))?;
            hash.update(&*buf);
        }
    }
    Ok(())
}

/// The fingerprint of a GGUF file or Hugging Face folder without loading its weights (see the module
/// docs).
///
/// **Errors**: unreadable or malformed files (named).
pub fn fingerprint(path: &Path) -> Result<String> {
    let mut hash = Sha256::new();
    if path.is_dir() {
        let config = path.join("config.json");
        hash.update(std::fs::read(&config).map_err(|e| ModelError::io(&config, e))?);
        let ckpt = HfCheckpoint::open(path)?;
        for file in ckpt.shard_paths() {
            let head = read_prefix(&file, 8)?;
            let mut n8 = [0u8; 8];
            if head.len() < 8 {
                return Err(ModelError::format(
                    &file,
                    "shorter than a safetensors header",
                ));
            }
            n8.copy_from_slice(&head);
            hash.update(read_prefix(&file, 8 + u64::from_le_bytes(n8))?);
        }
        for st in ckpt.shards() {
            // The reader checked every range against the file; the map is in name order.
            let ranges: Vec<(u64, u64)> = st
                .tensors
                .values()
                .map(|t| (t.start as u64, t.end as u64))
                .collect();
            hash_samples(&mut hash, st.path(), &ranges)?;
        }
    } else {
        let gguf = GgufFile::open(path)?;
        hash.update(read_prefix(path, gguf.data_start)?);
        // A tensor's bytes run to the next tensor's start (or the end of the file), padding included.
        let file_len = std::fs::metadata(path)
            .map_err(|e| ModelError::io(path, e))?
            .len();
        let mut starts: Vec<u64> = gguf
            .tensors
            .iter()
            .filter_map(|t| gguf.data_start.checked_add(t.offset))
            .filter(|&s| s <= file_len)
            .collect();
        starts.sort_unstable();
        let ranges: Vec<(u64, u64)> = starts
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, starts.get(i + 1).copied().unwrap_or(file_len)))
            .collect();
        hash_samples(&mut hash, path, &ranges)?;
    }
    Ok(hex(&hash.finalize()))
}

/// Loads a GGUF file or a Hugging Face folder (`config.json` + safetensors) in f32.
///
/// **Errors**: whatever the readers report, naming the file.
pub fn load(path: &Path) -> Result<Loaded> {
    load_with(path, None)
}

/// Loads a checkpoint like [`load`], with every block resident (`keep: None`) or streamed from the file
/// with the `keep` most recently used blocks kept widened ([`Model::load_streamed`]).
///
/// **Errors**: whatever the readers report, naming the file.
pub fn load_with(path: &Path, keep: Option<usize>) -> Result<Loaded> {
    let (config, source): (ModelConfig, Arc<dyn TensorSource + Send + Sync>) = if path.is_dir() {
        let ckpt = HfCheckpoint::open(path)?;
        (ckpt.config.clone(), Arc::new(ckpt))
    } else {
        let gguf = Arc::new(GgufFile::open(path)?);
        let config = ModelConfig::from_gguf(&gguf)?;
        let source = GgufSource::new(gguf, &config);
        (config, Arc::new(source))
    };
    let model = match keep {
        None => Model::load(config, &*source)?,
        Some(keep) => Model::load_streamed(config, source, keep)?,
    };
    Ok(Loaded {
        path: path.to_path_buf(),
        model,
        fingerprint: fingerprint(path)?,
    })
}

/// The configuration of a GGUF file or Hugging Face folder, without reading any tensor.
///
/// **Errors**: whatever the readers report, naming the file.
pub fn config(path: &Path) -> Result<ModelConfig> {
    if path.is_dir() {
        ModelConfig::from_hf_json_file(path.join("config.json"))
    } else {
        ModelConfig::from_gguf(&GgufFile::open(path)?)
    }
}

/// The hex SHA-256 of a whole file (the demo checks the downloaded GGUF with it).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex(&hash.finalize()))
}

/// The tokenizer that goes with a checkpoint: `explicit`, or else `tokenizer.json` in an HF folder, or
/// else (for GGUF) the one rebuilt from the file's own vocabulary and merges. It is not checked against
/// the model ([`tokenizer_for`] is).
///
/// **Errors**: no tokenizer to be found, or the readers' errors.
pub fn find_tokenizer(model_path: &Path, explicit: Option<&Path>) -> Result<Tokenizer> {
    if let Some(p) = explicit {
        return Tokenizer::from_file(p);
    }
    if model_path.is_dir() {
        return Tokenizer::from_file(model_path.join("tokenizer.json"));
    }
    Tokenizer::from_gguf(&GgufFile::open(model_path)?)
}

/// The tokenizer for text the model `loaded` will read ([`find_tokenizer`]), checked to fit it
/// ([`check_tokenizer`]).
///
/// **Errors**: those of [`find_tokenizer`] and [`check_tokenizer`].
pub fn tokenizer_for(loaded: &Loaded, explicit: Option<&Path>) -> Result<Tokenizer> {
    let tok = find_tokenizer(&loaded.path, explicit)?;
    check_tokenizer(&tok, loaded)?;
    Ok(tok)
}

/// Refuses a tokenizer that can produce token ids the model has no embedding for: its largest id
/// (added tokens included) must be below the model's `vocab_size`. A smaller vocabulary is fine
/// (models pad theirs).
///
/// **Errors**: [`ModelError::Refused`] naming both files and both sizes.
pub fn check_tokenizer(tok: &Tokenizer, loaded: &Loaded) -> Result<()> {
    let (bound, vocab) = (tok.id_bound(), loaded.model.config.vocab_size);
    if bound > vocab {
        let model = if loaded.path.is_dir() {
            loaded.path.join("config.json")
        } else {
            loaded.path.clone()
        };
        crate::bail!(
            "the tokenizer {} has token ids up to {} (a vocabulary of {bound}, added tokens included), \
             but the model {} has vocab_size {vocab}: ids from {vocab} on have no embedding; pass the \
             tokenizer made for this model with --tokenizer",
            tok.path().display(),
            bound - 1,
            model.display()
        );
    }
    Ok(())
}
