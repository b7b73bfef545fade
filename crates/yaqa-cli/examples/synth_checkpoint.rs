//! Writes a synthetic checkpoint with Llama-3.1-8B's shapes (hidden 4096, intermediate 14336, 32 query
//! and 8 key-value heads of 128, vocabulary 128256, untied head) and a few blocks, in bf16 as a sharded
//! Hugging Face folder (`model-0000K-of-0000N.safetensors` and `model.safetensors.index.json`): one
//! shard for the embedding, norm and head, one per block. Each block is generated, rounded and written
//! on its own, so writing it needs about one block of memory. For the memory checks of issue #24
//! (`scripts/scale-check.sh`).
//!
//! `cargo run --release -p yaqa-cli --example synth_checkpoint -- OUT_DIR [BLOCKS] [HIDDEN INTERMEDIATE]`

use std::collections::BTreeMap;
use std::path::Path;

use yaqa_model::formats::hf::{Half, half_tensors, write_atomic, write_safetensors};
use yaqa_model::transformer::config::ModelConfig;
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model};

fn config(blocks: usize, hidden: usize, intermediate: usize) -> ModelConfig {
    let mut c = tiny_config(Family::Llama, false);
    c.vocab_size = 128_256;
    c.hidden_size = hidden;
    c.intermediate_size = intermediate;
    c.n_layers = blocks;
    c.head_dim = 128;
    c.n_heads = hidden / 128;
    c.n_kv_heads = (hidden / 128 / 4).max(1);
    c.rope_theta = 500_000.0;
    c.max_position_embeddings = Some(131_072);
    c
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = Path::new(
        args.first()
            .ok_or("usage: synth_checkpoint OUT_DIR [BLOCKS]")?,
    );
    let blocks: usize = args.get(1).map_or(Ok(4), |b| b.parse())?;
    let hidden: usize = args.get(2).map_or(Ok(4096), |b| b.parse())?;
    let intermediate: usize = args.get(3).map_or(Ok(14336), |b| b.parse())?;
    if out.exists() {
        return Err(format!("{} exists; refusing to overwrite it", out.display()).into());
    }
    std::fs::create_dir_all(out)?;
    let full = config(blocks, hidden, intermediate);
    let shards = blocks + 1;
    let name = |k: usize| format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
    let mut weight_map = BTreeMap::new();
    // Shard 0: the embedding, the final norm and the head (a model of no blocks).
    let mut edge = full.clone();
    edge.n_layers = 0;
    let tensors = half_tensors(&Model::synthetic(edge, 1), Half::Bf16, |_| false)?;
    for (t, _) in &tensors {
        weight_map.insert(t.clone(), name(0));
    }
    write_safetensors(&out.join(name(0)), &tensors, "format", "pt")?;
    eprintln!("wrote {}", name(0));
    // One shard per block, each a one-block model of its own seed with a one-token vocabulary.
    for b in 0..blocks {
        let mut one = full.clone();
        one.n_layers = 1;
        one.vocab_size = 1;
        let model = Model::synthetic(one, 100 + b as u64);
        let tensors: Vec<_> =
            half_tensors(&model, Half::Bf16, |n| !n.starts_with("model.layers.0."))?
                .into_iter()
                .map(|(n, t)| {
                    (
                        n.replacen("model.layers.0.", &format!("model.layers.{b}."), 1),
                        t,
                    )
                })
                .collect();
        for (t, _) in &tensors {
            weight_map.insert(t.clone(), name(b + 1));
        }
        write_safetensors(&out.join(name(b + 1)), &tensors, "format", "pt")?;
        eprintln!("wrote {}", name(b + 1));
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    let text = serde_json::to_string_pretty(&index)?;
    write_atomic(&out.join("model.safetensors.index.json"), |tmp| {
        std::fs::write(tmp, &text)
    })?;
    let mut cfg = full.to_hf_json();
    cfg["torch_dtype"] = "bfloat16".into();
    let text = serde_json::to_string_pretty(&cfg)?;
    write_atomic(&out.join("config.json"), |tmp| std::fs::write(tmp, &text))?;
    Ok(())
}
