//! Opening "a model" from whatever the user points at (a GGUF file or a Hugging Face folder), with a
//! fingerprint that ties factor and quantized files to the weights they were made from.
//!
//! The fingerprint is the SHA-256 of the bytes that describe the weights without reading them all: for
//! GGUF the whole header up to the start of the tensor data (metadata, tensor names, types, shapes and
//! offsets); for a Hugging Face folder `config.json` followed by every safetensors file's JSON header in
//! shard order. Two checkpoints with the same fingerprint have the same layout and, for any real
//! checkpoint, the same weights; it costs a few milliseconds instead of hashing gigabytes.

use std::fs::File;
use std::io::Read;
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

/// The fingerprint of a GGUF file or Hugging Face folder without loading its weights.
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
    } else {
        let gguf = GgufFile::open(path)?;
        hash.update(read_prefix(path, gguf.data_start)?);
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
