//! `yaqa-model`: checkpoints, the transformer forward and backward, and the quantization job.
//!
//! Three rooms. [`formats`]: files in and out (GGUF, Hugging Face safetensors folders, yaqa's factor,
//! calibration and quantized files, the GPTQ writer). [`transformer`]: the Llama-family decoder under
//! Hugging Face tensor names, run through the layer-level operations of
//! [`yaqa_core::model_ops::ModelOps`] so the f64 reference and every backend run the same code; its
//! backward hands out the `(x, g)` pairs of every linear layer under the Fisher loss of DESIGN.md §1.
//! [`job`]: the work users ask for (collect factors, quantize, evaluate, compare, round, convert,
//! export) as config structs and a `run` generic over the backend, which the CLI and the Python package
//! only translate and print.

pub mod error;
pub mod formats;
pub mod job;
pub mod transformer;

pub use error::{ModelError, Result};
pub use transformer::config::{Family, ModelConfig, RopeScaling};
pub use transformer::tokenizer::Tokenizer;
pub use transformer::weights::{LayerId, LayerWeights, LinearKind, Model};
