//! Files in and out: checkpoints (GGUF, Hugging Face safetensors folders), yaqa's own factor,
//! calibration and quantized files (with their JSON headers and the bit-packing of codes), and the GPTQ
//! and compressed-tensors checkpoint writers, and llama.cpp GGUF out. One file per format, its reader and writer side by side; every size read from a
//! file is checked before it is used.

pub mod bitpack;
pub mod calib_file;
pub mod checkpoint;
pub mod compressed_tensors;
pub mod factor_file;
pub mod gguf;
pub mod gguf_from_hf;
pub mod gguf_writer;
pub mod gptq;
pub(crate) mod header;
pub mod hf;
pub mod llamacpp;
pub mod pages;
pub mod quant_file;

use std::fs::File;
use std::path::Path;

use crate::error::{ModelError, Result};

/// Opens `path` for reading, refusing a folder by name: opening a folder succeeds on Unix, and mapping
/// it then fails with a bare "No such device" that does not say what is wrong.
///
/// **Errors**: [`ModelError::NotAFile`] for a folder, [`ModelError::Io`] for the rest.
pub(crate) fn open_file(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let meta = file.metadata().map_err(|e| ModelError::io(path, e))?;
    if meta.is_dir() {
        return Err(ModelError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Reads a UTF-8 text file (calibration or evaluation text, `config.json`), refusing a folder by name
/// as [`open_file`] does.
///
/// **Errors**: [`ModelError::NotAFile`] for a folder, [`ModelError::BadFormat`] for bytes that are not
/// UTF-8 (with the offset of the first, so a binary or Latin-1 file is recognised as such),
/// [`ModelError::Io`] for the rest.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_file(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| ModelError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        ModelError::format(
            path,
            format!("not UTF-8 text (the first byte that is not UTF-8 is at offset {at})"),
        )
    })
}
