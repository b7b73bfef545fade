//! Helpers the `yaqa` binary's integration tests share: running the binary, scratch folders.

// Each test file compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `yaqa` binary built for this test run.
pub fn yaqa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_yaqa"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run the yaqa binary")
}

/// Runs `args`, expects success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = yaqa(args);
    assert!(
        out.status.success(),
        "yaqa {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `base` followed by `extra`, expects success, returns stderr (where progress and resumption are
/// reported).
pub fn ok_stderr(base: &[&str], extra: &[&str]) -> String {
    let args: Vec<&str> = base.iter().chain(extra).copied().collect();
    let out = yaqa(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "yaqa {args:?} failed:\n{err}");
    err
}

/// Runs `args`, expects failure, returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = yaqa(args);
    assert!(!out.status.success(), "yaqa {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An empty folder of its own for one test: `yaqa-<tag>-<pid>` in the temporary folder.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaqa-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A path as `&str` for an argument list.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny synthetic Llama (weights from `seed`) written as a Hugging Face folder `dir/model`, which is
/// returned.
pub fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    let model_dir = dir.join("model");
    let model = yaqa_model::Model::synthetic(
        yaqa_model::transformer::weights::tiny_config(yaqa_model::Family::Llama, true),
        seed,
    );
    yaqa_model::formats::hf::write_hf(&model, &model_dir).unwrap();
    model_dir
}

/// A word-level `tokenizer.json` with `vocab` (word → id) and, with `added`, one added token, which the
/// `tokenizers` crate numbers after the vocabulary's size.
pub fn word_tokenizer(path: &Path, vocab: &[(String, u32)], added: bool) {
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .map(|(w, id)| (w.clone(), serde_json::json!(id)))
        .collect();
    let added: Vec<serde_json::Value> = added
        .then(|| {
            serde_json::json!({"id": 0, "content": "<extra>", "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .into_iter()
        .collect();
    let spec = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "unk_token": "w0", "vocab": vocab}
    });
    std::fs::write(path, spec.to_string()).unwrap();
}

/// Words `w0`..`w{n-1}` with ids `0..n`.
pub fn words(n: u32) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("w{i}"), i)).collect()
}

/// A byte-level BPE `tokenizer.json` (GPT-2's pre-tokenizer and byte alphabet, no merges): ids 0–255,
/// one per byte, the smallest tokenizer a GGUF export writes as `tokenizer.ggml.model = gpt2`.
pub fn byte_tokenizer(path: &Path) {
    // GPT-2's byte → character map: printable Latin-1 bytes stand for themselves, the rest for 256 + k.
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut extra = 0;
    let vocab: serde_json::Map<String, serde_json::Value> = (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            };
            (c.to_string(), serde_json::json!(b))
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
                                        "trim_offsets": true, "use_regex": true});
    let spec = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(path, spec.to_string()).unwrap();
}

/// `model` as llama.cpp stores it: a GGUF file at `path` with the `llama.*` keys, the vocabulary of the
/// byte-level BPE `tokenizer` and every tensor dense, Q and K rows in llama.cpp's order.
pub fn write_gguf_model(model: &yaqa_model::Model<f32>, tokenizer: &Path, path: &Path) {
    use yaqa_model::formats::{gguf, gguf_from_hf, gguf_writer};
    let c = &model.config;
    let mut metadata = gguf_from_hf::llama_metadata(c, "tiny").unwrap();
    metadata.extend(gguf_from_hf::tokenizer_metadata(tokenizer, c).unwrap());
    let tensors = model
        .hf_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, shape, data)| {
            let heads = if name.ends_with("q_proj.weight") {
                Some(c.n_heads)
            } else if name.ends_with("k_proj.weight") {
                Some(c.n_kv_heads)
            } else {
                None
            };
            let data = match heads {
                Some(h) => gguf::permute_rows(data, shape[0], shape[1], h, c.head_dim).unwrap(),
                None => data.to_vec(),
            };
            let gguf_name = gguf::hf_to_gguf_name(&name).unwrap();
            gguf_from_hf::dense_tensor(gguf_name, &shape, &data)
        })
        .collect::<Vec<_>>();
    gguf_writer::write_gguf(path, &metadata, &tensors).unwrap();
}
