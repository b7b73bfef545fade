//! The backward pass against central finite differences, in exact f64 through the reference operations.
//!
//! For tiny random models (GQA with tied embeddings; Qwen3 q/k norms; Qwen2 biases) the weight gradient
//! `gᵀ x` of every linear layer, formed from the `(x, g)` pairs the backward hands out, must match
//! `(ℓ(W + h·e_rc) − ℓ(W − h·e_rc)) / 2h` of the Fisher loss with the labels held fixed. Then the CPU
//! f32 backward must agree with the f64 reference normwise.

use std::collections::HashMap;

use yaqa_backend_cpu::Cpu;
use yaqa_core::Mat;
use yaqa_core::model_ops::{ModelOps, Real};
use yaqa_core::reference::Reference;
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, LinearKind, Model};

/// Central differences in f64 with h = 1e-5: truncation ~h²·ℓ''' ≈ 1e-10, rounding ~1e-16/h ≈ 1e-11;
/// measured worst errors 5e-10 (Llama), 1.3e-9 (Qwen2), 2.5e-9 (Qwen3) of the largest entry, on x86-64.
const FD_REL: f64 = 1e-7;
/// CPU f32 against reference f64, normwise per layer: f32 rounding through two blocks; the test prints
/// the worst value it sees.
const F32_REL: f64 = 1e-4;

fn ids(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = yaqa_core::Rng::new(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// `gᵀ x` for every (layer, kind).
fn weight_grads<T: Real, B: ModelOps<T>>(
    tf: &Transformer<'_, T, B>,
    ids: &[u32],
    batch: usize,
    labels: &[u32],
) -> (f64, HashMap<(usize, LinearKind), Mat<f64>>) {
    let mut grads = HashMap::new();
    let loss = tf
        .backward(ids, batch, labels, &mut |layer, kind, x, g| {
            let (t, n, m) = (x.rows, x.cols, g.cols);
            let mut w = Mat::zeros(m, n);
            for r in 0..t {
                for o in 0..m {
                    let gv = g.at(r, o).to_f64();
                    for i in 0..n {
                        *w.at_mut(o, i) += gv * x.at(r, i).to_f64();
                    }
                }
            }
            assert!(
                grads.insert((layer, kind), w).is_none(),
                "each linear is visited once"
            );
            Ok(())
        })
        .unwrap();
    (loss, grads)
}

fn check_finite_differences(family: Family, tied: bool) {
    let model = Model::synthetic(tiny_config(family, tied), 42)
        .cast::<f64>()
        .unwrap();
    let (batch, seq) = (2, 5);
    let ids = ids(model.config.vocab_size, batch * seq, 7);
    let tf = Transformer::new(&model, &Reference);
    let hidden = tf.forward(&ids, batch, &mut |_, _| {}).unwrap();
    let labels = tf.sample_labels(&hidden, 1234).unwrap();
    let (loss, grads) = weight_grads(&tf, &ids, batch, &labels);
    let plain = tf.cross_entropy(&ids, batch, &labels).unwrap();
    assert!(
        (loss - plain).abs() < 1e-12,
        "backward loss {loss} vs forward {plain}"
    );
    assert_eq!(grads.len(), model.layers.len() * 7);

    let h = 1e-5;
    let mut worst = 0.0f64;
    for layer in 0..model.layers.len() {
        for kind in LinearKind::ALL {
            let g = &grads[&(layer, kind)];
            let scale = g.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            assert!(
                scale > 0.0,
                "{family:?} layer {layer} {kind:?}: zero gradient"
            );
            // A spread of entries: first, last, and a few in between.
            let picks = [
                (0, 0),
                (g.rows - 1, g.cols - 1),
                (g.rows / 2, g.cols / 3),
                (g.rows / 3, g.cols - 2),
            ];
            for (r, c) in picks {
                let loss_at = |delta: f64| {
                    let mut m = model.clone();
                    *m.layers[layer].linear_mut(kind).at_mut(r, c) += delta;
                    Transformer::new(&m, &Reference)
                        .cross_entropy(&ids, batch, &labels)
                        .unwrap()
                };
                let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h);
                let err = (fd - g.at(r, c)).abs() / scale;
                worst = worst.max(err);
                assert!(
                    err <= FD_REL,
                    "{family:?} layer {layer} {kind:?} [{r},{c}]: backward {} vs finite difference {fd}",
                    g.at(r, c)
                );
            }
        }
    }
    eprintln!(
        "{family:?} (tied {tied}): worst finite-difference error {worst:.2e} of the largest entry"
    );
}

#[test]
fn llama_gqa_tied_matches_finite_differences() {
    check_finite_differences(Family::Llama, true);
}

#[test]
fn qwen3_qk_norm_matches_finite_differences() {
    check_finite_differences(Family::Qwen3, false);
}

#[test]
fn qwen2_biases_match_finite_differences() {
    check_finite_differences(Family::Qwen2, true);
}

#[test]
fn cpu_backward_matches_reference_and_labels_replay() {
    for family in [Family::Llama, Family::Qwen3, Family::Qwen2] {
        let model = Model::synthetic(tiny_config(family, family != Family::Qwen3), 9);
        let wide = model.cast::<f64>().unwrap();
        let (batch, seq) = (3, 6);
        let ids = ids(model.config.vocab_size, batch * seq, 3);
        let cpu = Cpu::default();
        let fast = Transformer::new(&model, &cpu);
        let slow = Transformer::new(&wide, &Reference);
        let hidden = fast.forward(&ids, batch, &mut |_, _| {}).unwrap();
        let labels = fast.sample_labels(&hidden, 99).unwrap();
        assert_eq!(
            labels,
            fast.sample_labels(&hidden, 99).unwrap(),
            "a recorded seed replays"
        );
        assert_ne!(labels, fast.sample_labels(&hidden, 100).unwrap());
        let (loss_f, grads_f) = weight_grads(&fast, &ids, batch, &labels);
        let (loss_s, grads_s) = weight_grads(&slow, &ids, batch, &labels);
        assert!(
            (loss_f - loss_s).abs() < 1e-5,
            "{family:?}: loss {loss_f} vs {loss_s}"
        );
        let mut worst = 0.0f64;
        for (key, g) in &grads_s {
            let rel = yaqa_core::mat::rel_diff_fro(&grads_f[key].data, &g.data);
            worst = worst.max(rel);
            assert!(
                rel <= F32_REL,
                "{family:?} {key:?}: relative difference {rel:e}"
            );
        }
        eprintln!(
            "{family:?}: CPU f32 vs reference f64 weight gradients, worst normwise {worst:.2e}"
        );
        // fisher_backward is forward + sample + backward with the same seed.
        let mut n = 0;
        let fisher = fast
            .fisher_backward(&ids, batch, 99, &mut |_, _, _, _| {
                n += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 14);
        assert!((fisher.loss - loss_f).abs() < 1e-12);
        assert_eq!(
            fisher.labels, labels,
            "the labels handed back are the ones used"
        );
    }
}
