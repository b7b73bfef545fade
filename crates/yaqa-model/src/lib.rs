//! `yaqa-model`: checkpoints, the transformer forward and backward, calibration and evaluation.
//!
//! Checkpoints come in as GGUF ([`gguf`]) or Hugging Face safetensors folders ([`hf`]) and become a
//! [`Model`] under Hugging Face tensor names; [`hf::write_hf`] writes one back out, and
//! [`gptq_format::write_gptq`] writes a quantized model as a GPTQ-packed checkpoint. The transformer
//! ([`transformer`]) runs Llama-family decoders through the layer-level operations of
//! [`yaqa_core::model_ops::ModelOps`], so the f64 reference and the CPU backend run the same code.
//! Its backward produces the `(x, g)` pairs of every linear layer under the Fisher loss of DESIGN.md §1,
//! and [`eval`] computes KL to the original model and perplexity (DESIGN.md §6).

pub mod bitpack;
pub mod calib;
pub mod calib_file;
pub mod checkpoint;
pub mod collect;
pub mod config;
pub mod error;
pub mod eval;
pub mod factor_file;
pub mod gguf;
pub mod gptq_format;
mod header;
pub mod hf;
pub mod pipeline;
pub mod quant_file;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use config::{Family, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use tokenizer::Tokenizer;
pub use weights::{LayerWeights, LinearKind, Model};
