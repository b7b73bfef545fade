//! SmolLM2-135M forward throughput on the CPU backend: tokens/s for a batch of 4 × 256 tokens.
//!
//! Cost model: about 2 · 134.5M · 1024 ≈ 276 GFLOP of GEMM per batch (the tied 49,152-row head is
//! 58 GFLOP of it) plus ~5 GFLOP of attention, so on a machine that sustains P GFLOP/s in f32 GEMM the
//! ceiling is roughly 1024 · P / 281 tokens/s. Uses the GGUF fixture from `../shared` when present and a
//! synthetic model of the same shape otherwise (the speed does not depend on the values).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use yaqa_backend_cpu::Cpu;
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::{Model, ModelConfig, RopeScaling};

fn smollm2() -> Model<f32> {
    let gguf = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    if let Ok(model) = Model::from_gguf(&gguf) {
        return model;
    }
    eprintln!(
        "fixture {} not found: benchmarking a synthetic model of the same shape",
        gguf.display()
    );
    let config = ModelConfig {
        family: yaqa_model::Family::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: Some(8192),
        tie_word_embeddings: true,
        attention_bias: false,
        qk_norm: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_id: None,
    };
    Model::synthetic(config, 0)
}

fn forward(c: &mut Criterion) {
    let model = smollm2();
    let cpu = Cpu::default();
    let tf = Transformer::new(&model, &cpu);
    let (batch, seq) = (4, 256);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| ((i * 7919) % 49152) as u32)
        .collect();
    let mut group = c.benchmark_group("smollm2_forward");
    group.sample_size(10);
    group.throughput(Throughput::Elements((batch * seq) as u64));
    group.bench_function("4x256_hidden", |b| {
        b.iter(|| tf.forward(&ids, batch, &mut |_, _| {}).map(|h| h.data[0]))
    });
    group.bench_function("4x256_logits", |b| {
        b.iter(|| {
            let h = tf.forward(&ids, batch, &mut |_, _| {})?;
            let mut acc = 0.0f32;
            tf.logits_chunks(&h, &mut |_, l| {
                acc += l.data[0];
                Ok(())
            })?;
            Ok::<f32, yaqa_model::ModelError>(acc)
        })
    });
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
