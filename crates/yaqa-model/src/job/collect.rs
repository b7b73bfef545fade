//! Accumulating every linear layer's Kronecker factors over calibration sequences (DESIGN.md §1–2).
//!
//! Each linear layer (block `i`, kind `k`) has a list of [`Factors`] to fill; several sketches can be
//! collected in one pass (for example `Σ x xᵀ` for LDLQ next to Sketch B for YAQA: the backward hands out
//! `x` as well). When no sketch needs gradients the model only runs forward and every block's linear
//! inputs are accumulated as soon as the block has run; otherwise each sequence gets a Fisher backward
//! ([`Transformer::fisher_backward`]) with labels sampled from the model's own softmax, seeded by
//! [`label_seed`] from the run's seed and the sequence's number, or against the labels that came with
//! the sequence ([`CalibSeq::labels`], from a calibration file). Either way the visitor consumes one
//! layer's `(x, g)` at a time, so no more than one block's activations are ever alive. The labels each
//! backward used are handed back, so a run can record them and be audited or replayed exactly.
//!
//! Sequences go through the model one at a time: Sketch B is per sequence, and this keeps each
//! sequence's labels independent of how the set was sharded or batched.

use std::collections::BTreeMap;

use yaqa_core::Mat;
use yaqa_core::backend::Backend;
use yaqa_core::model_ops::ModelOps;
use yaqa_core::sketch::{Factors, SketchKind};

use crate::error::{ModelError, Result};
use crate::job::calib::CalibSeq;
use crate::transformer::decoder::Transformer;
use crate::transformer::weights::{LayerId, LinearKind, Model};

/// The factors being accumulated: one list per linear layer.
pub type FactorSet = BTreeMap<LayerId, Vec<Factors>>;

/// Empty factors of `kind` for every linear layer of `model` (`Sketch A` starts at pass 0).
pub fn empty_factors<T>(model: &Model<T>, kind: SketchKind) -> BTreeMap<LayerId, Factors> {
    LayerId::all(model)
        .into_iter()
        .map(|id| {
            let (rows, cols) = id.kind.shape(&model.config);
            let f = match kind {
                SketchKind::Xtx => Factors::xtx(cols),
                SketchKind::B => Factors::sketch_b(rows, cols),
                SketchKind::A { .. } => Factors::sketch_a_start(cols),
            };
            (id, f)
        })
        .collect()
}

/// The label seed of calibration sequence `index` in a run with `seed` (recorded in factor files as the
/// run's seed; this derivation is part of the format).
pub fn label_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

/// Runs `seqs` through `model` and adds them to every list in `factors`. `progress(done)` is called after
/// each sequence with the number done.
///
/// When a sketch needs gradients, sequence `s` is backpropagated against `s.labels` if it has them and
/// otherwise against labels sampled with `label_seed(seed, s.index)`. Returns the labels every backward
/// used, one list per sequence in the order of `seqs` (empty when every sketch is forward-only); giving
/// them back as `labels` in another call reproduces the same gradients without sampling.
///
/// **Errors**: a layer of the model missing from `factors` (or the other way round), factor shapes that
/// do not match the weights, given labels of the wrong length or out of range, non-finite activations or
/// gradients (named by layer), forward errors.
pub fn collect<B: Backend + ModelOps<f32>>(
    backend: &B,
    model: &Model<f32>,
    seqs: &[CalibSeq],
    seed: u64,
    factors: &mut FactorSet,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<u32>>> {
    for id in LayerId::all(model) {
        let list = factors.get(&id).ok_or_else(|| {
            ModelError::Input(format!("no factors to accumulate for layer {}", id.name()))
        })?;
        let (m, n) = id.kind.shape(&model.config);
        for f in list {
            if f.h_in.n != n || f.h_out.as_ref().is_some_and(|h| h.n != m) {
                return Err(ModelError::Input(format!(
                    "factors for {} do not fit its {m}×{n} weight",
                    id.name()
                )));
            }
        }
    }
    if factors.len() != LayerId::all(model).len() {
        return Err(ModelError::Input(format!(
            "{} factor lists for a model with {} linear layers",
            factors.len(),
            LayerId::all(model).len()
        )));
    }
    let needs_gradients = factors.values().flatten().any(|f| f.kind.needs_gradients());
    let tf = Transformer::new(model, backend);
    let dyn_backend: &dyn Backend = backend;
    let mut used = Vec::with_capacity(if needs_gradients { seqs.len() } else { 0 });
    for (done, seq) in seqs.iter().enumerate() {
        if needs_gradients {
            let visit = &mut |block, kind, x: &Mat<f32>, g: &Mat<f32>| {
                add_pair(dyn_backend, factors, block, kind, x, Some(g))
            };
            match &seq.labels {
                Some(labels) => {
                    check_given_labels(seq, model.config.vocab_size)?;
                    tf.backward(&seq.ids, 1, labels, visit)?;
                    used.push(labels.clone());
                }
                None => {
                    let fisher =
                        tf.fisher_backward(&seq.ids, 1, label_seed(seed, seq.index), visit)?;
                    used.push(fisher.labels);
                }
            }
        } else {
            tf.forward_linear_inputs(&seq.ids, 1, &mut |block, kind, x| {
                add_pair(dyn_backend, factors, block, kind, x, None)
            })?;
        }
        progress(done + 1);
    }
    Ok(used)
}

/// One factor map: every layer's factors of one sketch.
pub type Set = BTreeMap<LayerId, Factors>;

/// [`collect`] over several factor maps at once (one per sketch, in `start`'s order): accumulates `seqs`
/// into them and returns them with the Fisher labels the backward passes used.
///
/// **Errors**: those of [`collect`].
pub fn collect_sets<B: Backend + ModelOps<f32>>(
    backend: &B,
    model: &Model<f32>,
    seqs: &[CalibSeq],
    seed: u64,
    start: Vec<Set>,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<Set>, Vec<Vec<u32>>)> {
    let count = start.len();
    let mut set: FactorSet = BTreeMap::new();
    for map in start {
        for (id, f) in map {
            set.entry(id).or_default().push(f);
        }
    }
    let labels = collect(backend, model, seqs, seed, &mut set, progress)?;
    let mut out: Vec<Set> = vec![BTreeMap::new(); count];
    for (id, list) in set {
        for (k, f) in list.into_iter().enumerate() {
            out[k].insert(id, f);
        }
    }
    Ok((out, labels))
}

/// Puts the labels a collection used on their sequences.
pub fn attach_labels(seqs: &mut [CalibSeq], labels: Vec<Vec<u32>>) {
    for (s, l) in seqs.iter_mut().zip(labels) {
        s.labels = Some(l);
    }
}

/// The Fisher labels [`collect`] samples for `seq` with `seed` (one forward pass and the seeded draw),
/// for a sequence whose backward ran in an earlier run that kept no record of them.
///
/// **Errors**: forward errors.
pub fn sampled_labels<B: Backend + ModelOps<f32>>(
    backend: &B,
    model: &Model<f32>,
    seq: &CalibSeq,
    seed: u64,
) -> Result<Vec<u32>> {
    let tf = Transformer::new(model, backend);
    let hidden = tf.forward(&seq.ids, 1, &mut |_, _| {})?;
    tf.sample_labels(&hidden, label_seed(seed, seq.index))
}

/// Refuses given labels that cannot belong to `seq`, naming the sequence (the backward would only say
/// how many labels it got).
fn check_given_labels(seq: &CalibSeq, vocab_size: usize) -> Result<()> {
    let Some(labels) = &seq.labels else {
        return Ok(());
    };
    if labels.len() != seq.ids.len() {
        return Err(ModelError::Input(format!(
            "calibration sequence {}: {} labels for {} tokens",
            seq.index,
            labels.len(),
            seq.ids.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= vocab_size) {
        return Err(ModelError::Input(format!(
            "calibration sequence {}: label {bad} ≥ vocab size {vocab_size}",
            seq.index
        )));
    }
    Ok(())
}

/// Adds one layer's `(x, g)` to each of its factor lists.
fn add_pair(
    backend: &dyn Backend,
    factors: &mut FactorSet,
    block: usize,
    kind: LinearKind,
    x: &Mat<f32>,
    g: Option<&Mat<f32>>,
) -> Result<()> {
    let id = LayerId { block, kind };
    let list = factors
        .get_mut(&id)
        .ok_or_else(|| ModelError::Input(format!("no factors for layer {}", id.name())))?;
    for f in list {
        f.add_sequence(backend, x, g)
            .map_err(|e| ModelError::Core(e.in_layer(&id.name())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::config::Family;
    use crate::transformer::weights::tiny_config;
    use yaqa_core::mat::rel_diff_fro;
    use yaqa_core::reference::Reference;

    /// Explicit `(Σ G_bᵀG_b, Σ G_bG_bᵀ, Σ x xᵀ)` of one layer.
    type ExplicitSums = (Mat<f64>, Mat<f64>, Mat<f64>);

    /// The reference backend sums in f64; the explicit sums below are f64 too, in another order.
    const SUM_REL: f64 = 1e-10;

    fn seqs(vocab: u32) -> Vec<CalibSeq> {
        (0..3)
            .map(|index| CalibSeq {
                index: index + 4,
                ids: (0..9)
                    .map(|t| ((t * 7 + index * 13 + 1) as u32) % vocab)
                    .collect(),
                labels: None,
            })
            .collect()
    }

    #[test]
    fn layer_names_round_trip_and_order() {
        let model = Model::synthetic(tiny_config(Family::Llama, true), 1);
        let all = LayerId::all(&model);
        assert_eq!(all.len(), 14);
        for id in &all {
            assert_eq!(LayerId::parse(&id.name()), Some(*id));
        }
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, all);
        assert_eq!(LayerId::parse("model.layers.x.mlp.up_proj"), None);
    }

    #[test]
    fn sketches_equal_their_explicit_sums() {
        let model = Model::synthetic(tiny_config(Family::Llama, true), 2);
        let seqs = seqs(model.config.vocab_size as u32);
        let seed = 77;
        let b = empty_factors(&model, SketchKind::B);
        let x = empty_factors(&model, SketchKind::Xtx);
        let mut set: FactorSet = b
            .into_iter()
            .map(|(id, f)| {
                let xf = x[&id].clone();
                (id, vec![f, xf])
            })
            .collect();
        let mut calls = 0;
        collect(&Reference, &model, &seqs, seed, &mut set, &mut |d| {
            calls = d
        })
        .unwrap();
        assert_eq!(calls, 3);

        // Explicit sums from the same visitor output: G_b = Σ_t g_t x_tᵀ, h_in = Σ G_bᵀ G_b,
        // h_out = Σ G_b G_bᵀ, and Σ x xᵀ.
        let tf = Transformer::new(&model, &Reference);
        let mut want: BTreeMap<LayerId, ExplicitSums> = BTreeMap::new();
        for s in &seqs {
            tf.fisher_backward(
                &s.ids,
                1,
                label_seed(seed, s.index),
                &mut |block, kind, x, g| {
                    let (t, n, m) = (x.rows, x.cols, g.cols);
                    let gm = Mat::from_fn(m, n, |o, i| {
                        (0..t)
                            .map(|r| g.at(r, o) as f64 * x.at(r, i) as f64)
                            .sum::<f64>()
                    });
                    let e = want
                        .entry(LayerId { block, kind })
                        .or_insert_with(|| (Mat::zeros(n, n), Mat::zeros(m, m), Mat::zeros(n, n)));
                    for i in 0..n {
                        for j in 0..n {
                            *e.0.at_mut(i, j) +=
                                (0..m).map(|o| gm.at(o, i) * gm.at(o, j)).sum::<f64>();
                            *e.2.at_mut(i, j) += (0..t)
                                .map(|r| x.at(r, i) as f64 * x.at(r, j) as f64)
                                .sum::<f64>();
                        }
                    }
                    for a in 0..m {
                        for c in 0..m {
                            *e.1.at_mut(a, c) +=
                                (0..n).map(|i| gm.at(a, i) * gm.at(c, i)).sum::<f64>();
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
        }
        assert_eq!(want.len(), 14);
        for (id, (h_in, h_out, xtx)) in &want {
            let got = &set[id];
            assert_eq!(got[0].n_seqs, 3);
            assert_eq!(got[0].n_tokens, 27);
            let d_in = rel_diff_fro(&got[0].h_in.to_dense().data, &h_in.data);
            let d_out = rel_diff_fro(&got[0].h_out.as_ref().unwrap().to_dense().data, &h_out.data);
            let d_x = rel_diff_fro(&got[1].h_in.to_dense().data, &xtx.data);
            assert!(
                d_in < SUM_REL && d_out < SUM_REL && d_x < SUM_REL,
                "{}: h_in {d_in:e}, h_out {d_out:e}, xtx {d_x:e}",
                id.name()
            );
            assert!(h_in.norm_fro() > 0.0 && h_out.norm_fro() > 0.0);
        }

        // A forward-only collection of Σ x xᵀ gives the same h_in as the one taken during the backward.
        let mut fwd: FactorSet = empty_factors(&model, SketchKind::Xtx)
            .into_iter()
            .map(|(id, f)| (id, vec![f]))
            .collect();
        collect(&Reference, &model, &seqs, seed, &mut fwd, &mut |_| {}).unwrap();
        for (id, list) in &fwd {
            let d = rel_diff_fro(&list[0].h_in.data, &set[id][1].h_in.data);
            assert!(d < SUM_REL, "{}: {d:e}", id.name());
        }
    }

    fn sketch_b_set(model: &Model<f32>) -> FactorSet {
        empty_factors(model, SketchKind::B)
            .into_iter()
            .map(|(id, f)| (id, vec![f]))
            .collect()
    }

    #[test]
    fn the_labels_used_are_handed_back_and_given_labels_replace_sampling() {
        let model = Model::synthetic(tiny_config(Family::Llama, true), 6);
        let mut seqs = seqs(model.config.vocab_size as u32);
        let seed = 12;
        let mut sampled = sketch_b_set(&model);
        let used = collect(&Reference, &model, &seqs, seed, &mut sampled, &mut |_| {}).unwrap();
        // One label per token, exactly the ones the Fisher backward samples for that sequence.
        let tf = Transformer::new(&model, &Reference);
        assert_eq!(used.len(), seqs.len());
        for (s, labels) in seqs.iter().zip(&used) {
            let fisher = tf
                .fisher_backward(&s.ids, 1, label_seed(seed, s.index), &mut |_, _, _, _| {
                    Ok(())
                })
                .unwrap();
            assert_eq!(&fisher.labels, labels);
            assert_eq!(
                &sampled_labels(&Reference, &model, s, seed).unwrap(),
                labels
            );
        }
        // Given back, they replace sampling: the same factors bit for bit, whatever the seed.
        for (s, labels) in seqs.iter_mut().zip(&used) {
            s.labels = Some(labels.clone());
        }
        let mut given = sketch_b_set(&model);
        let again = collect(&Reference, &model, &seqs, seed + 1, &mut given, &mut |_| {}).unwrap();
        assert_eq!(again, used);
        assert_eq!(given, sampled);
        // Other labels give other gradients.
        for s in &mut seqs {
            let l = s.labels.as_mut().unwrap();
            l[3] = (l[3] + 1) % model.config.vocab_size as u32;
        }
        let mut changed = sketch_b_set(&model);
        collect(&Reference, &model, &seqs, seed, &mut changed, &mut |_| {}).unwrap();
        for (id, list) in &changed {
            assert_ne!(list[0].h_out, sampled[id][0].h_out, "{}", id.name());
        }
        // Forward-only collection uses no labels; bad given labels are refused with the sequence.
        let mut fwd: FactorSet = empty_factors(&model, SketchKind::Xtx)
            .into_iter()
            .map(|(id, f)| (id, vec![f]))
            .collect();
        assert!(
            collect(&Reference, &model, &seqs, seed, &mut fwd, &mut |_| {})
                .unwrap()
                .is_empty()
        );
        seqs[1].labels.as_mut().unwrap().pop();
        let err = collect(&Reference, &model, &seqs, seed, &mut changed, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("sequence 5: 8 labels for 9 tokens"),
            "{err}"
        );
        seqs[1].labels = Some(vec![37; 9]);
        let err = collect(&Reference, &model, &seqs, seed, &mut changed, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("label 37 ≥ vocab size 37"),
            "{err}"
        );
    }

    #[test]
    fn mismatched_factor_sets_are_refused() {
        let model = Model::synthetic(tiny_config(Family::Llama, true), 2);
        let seqs = seqs(model.config.vocab_size as u32);
        let mut set: FactorSet = empty_factors(&model, SketchKind::Xtx)
            .into_iter()
            .map(|(id, f)| (id, vec![f]))
            .collect();
        let first = *set.keys().next().unwrap();
        set.get_mut(&first).unwrap()[0] = Factors::xtx(3);
        let err = collect(&Reference, &model, &seqs, 0, &mut set, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("model.layers.0.self_attn.q_proj"),
            "{err}"
        );
    }
}
