//! Text to token ids through Hugging Face's `tokenizers` crate (pure-Rust build, `fancy-regex`).
//!
//! Calibration and evaluation text (DESIGN.md §6–7) is tokenized with the model's own `tokenizer.json`,
//! with no BOS and no special tokens added, exactly as the fixture reference outputs were made.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// A loaded `tokenizer.json`.
#[derive(Debug)]
pub struct Tokenizer {
    path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    ///
    /// The file's JSON syntax is checked before the tokenizer library reads it, and a panic of that
    /// library is turned into an error: `tokenizers` 0.22 `expect`s where a damaged file reaches it (a
    /// decoder whose JSON breaks off, a `Precompiled` normalizer whose data does not parse), which cargo
    /// fuzz found (`fuzz/fuzz_targets/tokenizer.rs`).
    ///
    /// **Errors**: a folder ([`ModelError::NotAFile`]), a file that is not UTF-8 JSON, or what the
    /// tokenizer library says of the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            return Err(ModelError::NotAFile { path });
        }
        let bad = |why: String| ModelError::Tokenizer {
            path: path.clone(),
            why,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| bad(format!("not JSON: {e}")))?;
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>()).map_err(
            |payload| {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                bad(format!(
                    "the tokenizers library failed on it ({what}): the file is damaged"
                ))
            },
        )?;
        let inner = parsed.map_err(|e| bad(e.to_string()))?;
        Ok(Self { path, inner })
    }

    /// Rebuilds the tokenizer of a GGUF file from its `tokenizer.ggml.tokens`, `merges` and `token_type`
    /// arrays, the way the fixture's `tokenizer.json` was made (fixture PROVENANCE.md): byte-level BPE
    /// with the vocabulary as given (id = index) and the merges in file order, no normalizer, the
    /// pre-tokenizer `Sequence[Digits(individual), ByteLevel(no prefix space, GPT-2 regex)]`, a ByteLevel
    /// decoder, no post-processor, and every control token (`token_type = 3`) as a special added token.
    ///
    /// **Errors**: a GGUF without a `gpt2` tokenizer, or malformed arrays (naming the file).
    pub fn from_gguf(gguf: &crate::formats::gguf::GgufFile) -> Result<Self> {
        use crate::formats::gguf::GgufValue;
        use serde_json::{Map, Value, json};
        let path = gguf.path().to_path_buf();
        let bad = |why: String| ModelError::Tokenizer {
            path: path.clone(),
            why,
        };
        let model = gguf.get("tokenizer.ggml.model").and_then(GgufValue::as_str);
        if model != Some("gpt2") {
            return Err(bad(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") can be rebuilt"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match gguf.get(key) {
                Some(GgufValue::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(format!("{key} holds non-strings"))),
                _ => Err(bad(format!("{key} is missing or not an array"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match gguf.get("tokenizer.ggml.token_type") {
            Some(GgufValue::Array(items)) => {
                items.iter().map(|v| v.as_u64().unwrap_or(1)).collect()
            }
            _ => vec![1; tokens.len()],
        };
        let mut vocab = Map::new();
        for (id, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(id));
        }
        let merges: Vec<Value> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| json!([a, b]))
                    .ok_or_else(|| bad(format!("merge {m:?} is not \"left right\"")))
            })
            .collect::<Result<_>>()?;
        let added: Vec<Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, ty))| **ty == 3)
            .map(|(id, (t, _))| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        let inner: tokenizers::Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| bad(format!("rebuilding from the GGUF arrays: {e}")))?;
        Ok(Self { path, inner })
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                why: e.to_string(),
            })
    }

    /// Writes the tokenizer as a `tokenizer.json` (atomically).
    ///
    /// **Errors**: serialisation or I/O, naming `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                why: format!("serialising: {e}"),
            })?;
        crate::formats::hf::write_atomic(path, |tmp| std::fs::write(tmp, text))
    }

    /// The vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One more than the largest token id the tokenizer can produce, added tokens included: the number
    /// of embedding rows a model needs for it (ids need not be contiguous, so this is not
    /// [`Tokenizer::vocab_size`]).
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&id| id as usize + 1)
    }

    /// The file the tokenizer was read from (`tokenizer.json`, or the GGUF it was rebuilt from).
    pub fn path(&self) -> &Path {
        &self.path
    }
}
