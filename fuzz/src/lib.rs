//! What each cargo-fuzz target does with its input: write the bytes where a reader expects a file and
//! read them with every reader of that format, as `bad_files.rs`'s in-suite mutation fuzz does. An `Err`
//! is a fine answer; a panic, an abort or a runaway allocation is the crash libFuzzer reports.
//!
//! The readers take paths (they map files), so each input is written to a per-process scratch folder,
//! under `/dev/shm` where there is one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use yaqa_backend_cpu::Cpu;
use yaqa_model::formats::calib_file::read_calib_file;
use yaqa_model::formats::factor_file::read_factors;
use yaqa_model::formats::gguf::GgufFile;
use yaqa_model::formats::gguf_from_hf::tokenizer_metadata;
use yaqa_model::formats::hf::{HfCheckpoint, write_hf};
use yaqa_model::formats::quant_file::QuantFile;
use yaqa_model::job::calib::Shard;
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model, Tokenizer};

/// This process's scratch folder.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = root.join(format!("yaqa-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the fuzz scratch folder");
        dir
    })
}

/// Writes `data` to `name` in the scratch folder as a new file.
fn put(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, data).expect("writing a fuzz input");
    path
}

/// A valid Hugging Face folder of a tiny synthetic Qwen2 model (biases included), made once: the
/// safetensors and config targets replace one of its two files.
fn hf_template() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join("template");
        let model = Model::synthetic(tiny_config(Family::Qwen2, false), 3);
        write_hf(&model, &dir).expect("writing the template folder");
        dir
    })
}

/// A Hugging Face folder whose `file` is `data` and whose other file is the template's.
fn hf_with(file: &str, data: &[u8]) -> PathBuf {
    let template = hf_template();
    let dir = scratch().join("hf");
    std::fs::create_dir_all(&dir).expect("creating the fuzz folder");
    for name in ["config.json", "model.safetensors"] {
        let _ = std::fs::remove_file(dir.join(name));
        if name == file {
            std::fs::write(dir.join(name), data).expect("writing a fuzz input");
        } else {
            std::fs::copy(template.join(name), dir.join(name)).expect("copying the template");
        }
    }
    dir
}

/// A GGUF model: its header, every tensor it dequantizes, the model built from it and its tokenizer.
pub fn gguf(data: &[u8]) {
    let path = put("model.gguf", data);
    if let Ok(file) = GgufFile::open(&path) {
        for t in &file.tensors {
            let _ = file.tensor_f32(&t.name);
        }
        let _ = Tokenizer::from_gguf(&file);
    }
    let _ = Model::from_gguf(&path);
}

/// A Hugging Face folder's `model.safetensors`, loaded as a model with the template's config.
pub fn hf_safetensors(data: &[u8]) {
    let dir = hf_with("model.safetensors", data);
    let _ = HfCheckpoint::open(&dir).and_then(|c| c.load_model());
}

/// A Hugging Face folder's `config.json`, loaded with the template's weights.
pub fn hf_config(data: &[u8]) {
    let dir = hf_with("config.json", data);
    let _ = HfCheckpoint::open(&dir).and_then(|c| c.load_model());
}

/// A quantized file: its layers listed and every one dequantized.
pub fn quantized(data: &[u8]) {
    let path = put("quant.safetensors", data);
    let Ok(q) = QuantFile::open(&path) else {
        return;
    };
    let Ok(layers) = q.layers() else { return };
    let cpu = Cpu::default();
    for id in layers {
        let _ = q.dequantize(&cpu, id);
    }
}

/// A factor file.
pub fn factors(data: &[u8]) {
    let _ = read_factors(&put("factors.safetensors", data));
}

/// A calibration record, read for a vocabulary of 40 and one shard of it selected.
pub fn calibration(data: &[u8]) {
    let path = put("calibration.safetensors", data);
    if let Ok(f) = read_calib_file(&path, Some(40)) {
        let _ = f.select(Shard { index: 1, count: 2 }, "feed", 9);
    }
}

/// A `tokenizer.json`: loaded by the tokenizer library, and read by the GGUF export for a model of 37
/// tokens.
///
/// `Tokenizer::from_file` turns the panics of the `tokenizers` library on damaged files into errors
/// (`catch_unwind`); libFuzzer's panic hook aborts on every panic, so panics raised inside that library
/// are let through to the catch, and any other still aborts.
pub fn tokenizer(data: &[u8]) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_library = info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"));
            if !in_library {
                abort(info);
            }
        }));
    });
    let path = put("tokenizer.json", data);
    let _ = Tokenizer::from_file(&path);
    let _ = tokenizer_metadata(&path, &tiny_config(Family::Llama, true));
}
