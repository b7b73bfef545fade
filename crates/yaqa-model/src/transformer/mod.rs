//! The model itself: its configuration ([`config`]), its weights under Hugging Face names with the
//! identity of each linear layer ([`weights`]), the decoder's forward and Fisher backward over the
//! layer-level operations of [`yaqa_core::model_ops::ModelOps`] ([`decoder`]), and the tokenizer.

pub mod blocks;
pub mod config;
pub mod decoder;
pub mod tokenizer;
pub mod weights;
