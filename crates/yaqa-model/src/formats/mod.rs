//! Files in and out: checkpoints (GGUF, Hugging Face safetensors folders), yaqa's own factor,
//! calibration and quantized files (with their JSON headers and the bit-packing of codes), and the GPTQ
//! checkpoint writer. One file per format, its reader and writer side by side; every size read from a
//! file is checked before it is used.

pub mod bitpack;
pub mod calib_file;
pub mod checkpoint;
pub mod factor_file;
pub mod gguf;
pub mod gptq;
pub(crate) mod header;
pub mod hf;
pub mod quant_file;
