//! Evaluation (DESIGN.md §6): next-token NLL and perplexity, and KL(original ‖ quantized) per position,
//! over non-overlapping windows of an evaluation text.
//!
//! Each window is an independent sequence (positions from 0), as in the fixture's perplexity protocol.
//! Logits are f32 (the models' precision); every reduction over the vocabulary is in f64.

use yaqa_core::Mat;
use yaqa_core::model_ops::{ModelOps, Real};

use crate::error::{ModelError, Result};
use crate::transformer::blocks::Block;
use crate::transformer::decoder::{Transformer, logsumexp};
use crate::transformer::weights::LayerWeights;

/// Perplexity over windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    /// Mean NLL (nats) of each window, each over `window − 1` predictions.
    pub window_nll: Vec<f64>,
    /// Mean of the window means (all windows have the same number of predictions).
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub ppl: f64,
}

/// KL to the original model over windows.
#[derive(Clone, Debug, PartialEq)]
pub struct KlReport {
    /// `KL(p_orig ‖ p_quant)` at every position of every window, window-major.
    pub per_position: Vec<f64>,
    /// Their mean.
    pub mean: f64,
}

/// The non-overlapping windows of `tokens` (a trailing partial window is dropped).
///
/// **Errors**: `window < 2` or fewer tokens than one window.
pub fn windows(tokens: &[u32], window: usize) -> Result<Vec<&[u32]>> {
    if window < 2 || tokens.len() < window {
        return Err(ModelError::Input(format!(
            "cannot cut {} tokens into windows of {window}",
            tokens.len()
        )));
    }
    Ok(tokens.chunks_exact(window).collect())
}

/// Per-position statistics of one forward: `logsumexp` at every row and the next-token NLL of every row
/// that has a target within its sequence (`batch · (seq − 1)` values, sequence-major).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStats {
    pub logsumexp: Vec<f64>,
    pub nll: Vec<f64>,
}

/// Runs `ids` (`batch` sequences) and returns [`TokenStats`]; `visit(first_row, logits)` also sees every
/// chunk of logits (for probes and argmax checks).
pub fn token_stats<T: Real, B: ModelOps<T>>(
    tf: &Transformer<'_, T, B>,
    ids: &[u32],
    batch: usize,
    visit: &mut dyn FnMut(usize, &Mat<T>),
) -> Result<TokenStats> {
    let hidden = tf.forward(ids, batch, &mut |_, _| {})?;
    let seq = ids.len() / batch;
    let mut lse = vec![0.0; ids.len()];
    let mut nll = vec![0.0; batch * (seq - 1)];
    tf.logits_chunks(&hidden, &mut |start, logits| {
        visit(start, logits);
        for r in 0..logits.rows {
            let row = start + r;
            let values = logits.row(r);
            lse[row] = logsumexp(values);
            let (b, t) = (row / seq, row % seq);
            if t + 1 < seq {
                nll[b * (seq - 1) + t] = lse[row] - values[ids[row + 1] as usize].to_f64();
            }
        }
        Ok(())
    })?;
    Ok(TokenStats {
        logsumexp: lse,
        nll,
    })
}

/// Perplexity over the non-overlapping windows of `tokens`, `batch_windows` windows per forward.
pub fn perplexity<T: Real, B: ModelOps<T>>(
    tf: &Transformer<'_, T, B>,
    tokens: &[u32],
    window: usize,
    batch_windows: usize,
) -> Result<Perplexity> {
    let wins = windows(tokens, window)?;
    let mut window_nll = Vec::with_capacity(wins.len());
    for group in wins.chunks(batch_windows.max(1)) {
        let ids: Vec<u32> = group.concat();
        let stats = token_stats(tf, &ids, group.len(), &mut |_, _| {})?;
        for w in stats.nll.chunks(window - 1) {
            window_nll.push(w.iter().sum::<f64>() / w.len() as f64);
        }
    }
    let mean_nll = window_nll.iter().sum::<f64>() / window_nll.len() as f64;
    Ok(Perplexity {
        window_nll,
        mean_nll,
        ppl: mean_nll.exp(),
    })
}

/// `KL(softmax(p) ‖ softmax(q))` of two logit rows, in f64.
pub fn kl_row<T: Real>(p: &[T], q: &[T]) -> f64 {
    let (lp, lq) = (logsumexp(p), logsumexp(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a.to_f64() - lp;
            la.exp() * (la - (b.to_f64() - lq))
        })
        .sum::<f64>()
        .max(0.0)
}

/// Per-position `KL(p_orig ‖ p_quant)` over the non-overlapping windows of `tokens`.
///
/// **Errors**: the two models disagree on vocabulary size, or any forward error.
pub fn kl_divergence<T: Real, B: ModelOps<T>>(
    original: &Transformer<'_, T, B>,
    quantized: &Transformer<'_, T, B>,
    tokens: &[u32],
    window: usize,
    batch_windows: usize,
) -> Result<KlReport> {
    let mut c = compare(
        original,
        &[quantized],
        tokens,
        window,
        batch_windows,
        &mut |_| {},
    )?;
    Ok(c.models.remove(0).0)
}

/// [`compare`]'s result: the original's perplexity and, per quantized model, its KL and perplexity.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub original: Perplexity,
    pub models: Vec<(KlReport, Perplexity)>,
}

/// How a model under evaluation gets its block `i`, given the original's block `i`: its own weights,
/// or the original's with its linear layers replaced (dequantized) on the fly. Candidates share the
/// original's embedding, final norm and head, which quantization does not touch.
pub type Candidate<'a, T> =
    dyn Fn(usize, &LayerWeights<T>) -> Result<Block<'a, LayerWeights<T>>> + 'a;

/// KL to the original and perplexity of several models over the same windows, running the original once
/// per window and each model once (the KL and the perplexity come from the same logits).
/// `progress(windows_done)` is called as the windows advance.
///
/// **Errors**: models whose configurations differ from the original's, or any forward error.
pub fn compare<T: Real, B: ModelOps<T>>(
    original: &Transformer<'_, T, B>,
    quantized: &[&Transformer<'_, T, B>],
    tokens: &[u32],
    window: usize,
    batch_windows: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Comparison> {
    if quantized
        .iter()
        .any(|q| q.model.config != original.model.config)
    {
        return Err(ModelError::Input(
            "the models have different configurations".into(),
        ));
    }
    let candidates: Vec<_> = quantized
        .iter()
        .map(|q| {
            let m = q.model;
            move |i: usize, _: &LayerWeights<T>| m.layers.get(i)
        })
        .collect();
    let refs: Vec<&Candidate<'_, T>> = candidates.iter().map(|c| c as &Candidate<'_, T>).collect();
    let n = tokens.len() / window.max(1);
    compare_blocks(original, &refs, tokens, window, batch_windows, n, progress)
}

/// [`compare`] block by block: `chunk_windows` windows at a time, each block is read once (from the
/// original's blocks, resident or streamed, and from each candidate) and run on every window of the
/// chunk, `batch_windows` per forward, before the next block; so a streamed model is read once per
/// chunk, not once per window. Holds the residual stream of the chunk's windows for every model.
/// The numbers equal a window-by-window forward with the same batches.
///
/// **Errors**: as [`compare`].
pub fn compare_blocks<T: Real, B: ModelOps<T>>(
    original: &Transformer<'_, T, B>,
    candidates: &[&Candidate<'_, T>],
    tokens: &[u32],
    window: usize,
    batch_windows: usize,
    chunk_windows: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Comparison> {
    let wins = windows(tokens, window)?;
    let batch_windows = batch_windows.max(1);
    // Whole batches per chunk, so the batches (and so the numbers) do not depend on the chunking.
    let chunk_windows = chunk_windows.max(batch_windows) / batch_windows * batch_windows;
    let n_blocks = original.model.layers.len();
    let mut kl: Vec<Vec<f64>> = vec![Vec::with_capacity(tokens.len()); candidates.len()];
    // Next-token NLL per window and model; index 0 is the original.
    let mut nll: Vec<Vec<f64>> = vec![Vec::with_capacity(wins.len()); candidates.len() + 1];
    let ops = original.ops;
    let mut before = 0;
    for chunk in wins.chunks(chunk_windows) {
        let groups: Vec<Vec<u32>> = chunk.chunks(batch_windows).map(|g| g.concat()).collect();
        let sizes: Vec<usize> = chunk.chunks(batch_windows).map(|g| g.len()).collect();
        // The residual stream of every batch, per model (0: the original).
        let mut states: Vec<Vec<Mat<T>>> = vec![Vec::new(); candidates.len() + 1];
        for (ids, &b) in groups.iter().zip(&sizes) {
            original.check_batch(ids, b)?;
            let h = original.embed(ids);
            for s in &mut states {
                s.push(h.clone());
            }
        }
        for i in 0..n_blocks {
            let ob = original.model.layers.get(i)?;
            for (k, s) in states.iter_mut().enumerate() {
                let block = match k {
                    0 => None,
                    _ => Some(candidates[k - 1](i, &ob)?),
                };
                let l: &LayerWeights<T> = block.as_deref().unwrap_or(&ob);
                for (h, &b) in s.iter_mut().zip(&sizes) {
                    *h = original.block_forward(l, h, b)?;
                }
            }
            progress(before + chunk.len() * (i + 1) / n_blocks.max(1));
        }
        for (g, ids) in groups.iter().enumerate() {
            let h_orig = original.final_norm(&states[0][g])?;
            let h_quant = states[1..]
                .iter()
                .map(|s| original.final_norm(&s[g]))
                .collect::<Result<Vec<_>>>()?;
            // Summed NLL of each window of this batch, per model.
            let mut sums = vec![vec![0.0; sizes[g]]; candidates.len() + 1];
            let mut start = 0;
            while start < h_orig.rows {
                let end = (start + crate::transformer::decoder::HEAD_CHUNK).min(h_orig.rows);
                let head = |h: &Mat<T>| {
                    ops.linear(
                        &crate::transformer::decoder::rows_of(h, start, end),
                        original.model.head(),
                        None,
                    )
                    .map_err(ModelError::from)
                };
                let lp = head(&h_orig)?;
                let lq = h_quant.iter().map(head).collect::<Result<Vec<_>>>()?;
                for r in 0..lp.rows {
                    let row = start + r;
                    let (w, t) = (row / window, row % window);
                    let target = (t + 1 < window).then(|| ids[row + 1] as usize);
                    if let Some(y) = target {
                        sums[0][w] += logsumexp(lp.row(r)) - lp.row(r)[y].to_f64();
                    }
                    for (k, l) in lq.iter().enumerate() {
                        kl[k].push(kl_row(lp.row(r), l.row(r)));
                        if let Some(y) = target {
                            sums[k + 1][w] += logsumexp(l.row(r)) - l.row(r)[y].to_f64();
                        }
                    }
                }
                start = end;
            }
            for (all, s) in nll.iter_mut().zip(&sums) {
                all.extend(s.iter().map(|v| v / (window - 1) as f64));
            }
        }
        before += chunk.len();
        progress(before);
    }
    let ppl = |window_nll: Vec<f64>| {
        let mean_nll = window_nll.iter().sum::<f64>() / window_nll.len() as f64;
        Perplexity {
            window_nll,
            mean_nll,
            ppl: mean_nll.exp(),
        }
    };
    let mut nll = nll.into_iter();
    let original = ppl(nll.next().unwrap_or_default());
    let models = kl
        .into_iter()
        .zip(nll)
        .map(|(per_position, window_nll)| {
            let mean = per_position.iter().sum::<f64>() / per_position.len() as f64;
            (KlReport { per_position, mean }, ppl(window_nll))
        })
        .collect();
    Ok(Comparison { original, models })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::config::Family;
    use crate::transformer::weights::{Model, tiny_config};
    use yaqa_core::reference::Reference;

    #[test]
    fn kl_row_is_zero_on_itself_and_matches_the_definition() {
        let p = [1.0f64, 2.0, -0.5, 0.25];
        let q = [0.5f64, 2.5, -1.0, 0.0];
        assert!(kl_row(&p, &p).abs() < 1e-15);
        // Shifting logits does not change the distribution.
        let shifted: Vec<f64> = p.iter().map(|v| v + 3.0).collect();
        assert!(kl_row(&p, &shifted).abs() < 1e-14);
        let soft = |x: &[f64]| {
            let z: f64 = x.iter().map(|v| v.exp()).sum();
            x.iter().map(|v| v.exp() / z).collect::<Vec<_>>()
        };
        let (sp, sq) = (soft(&p), soft(&q));
        let want: f64 = sp.iter().zip(&sq).map(|(a, b)| a * (a / b).ln()).sum();
        assert!((kl_row(&p, &q) - want).abs() < 1e-14);
    }

    #[test]
    fn kl_and_perplexity_over_windows() {
        let model = Model::synthetic(tiny_config(Family::Llama, true), 1);
        let mut noisy = model.clone();
        for v in noisy.layers[0].down_proj.data.iter_mut().step_by(3) {
            *v *= 1.5;
        }
        let tokens: Vec<u32> = (0..53).map(|i| (i * 7 % 37) as u32).collect();
        let tf = Transformer::new(&model, &Reference);
        let tq = Transformer::new(&noisy, &Reference);
        let same = kl_divergence(&tf, &tf, &tokens, 8, 4).unwrap();
        assert_eq!(
            same.per_position.len(),
            48,
            "6 whole windows of 8; the 5 trailing tokens are dropped"
        );
        assert!(same.mean.abs() < 1e-6);
        let kl = kl_divergence(&tf, &tq, &tokens, 8, 4).unwrap();
        assert!(
            kl.mean > 1e-4,
            "a perturbed model must diverge: {}",
            kl.mean
        );
        // Batching windows differently gives the same numbers.
        let kl1 = kl_divergence(&tf, &tq, &tokens, 8, 1).unwrap();
        assert!((kl.mean - kl1.mean).abs() < 1e-6);
        // Perplexity equals exp of the mean cross-entropy of the text's own next tokens, per window.
        let p = perplexity(&tf, &tokens, 8, 4).unwrap();
        assert_eq!(p.window_nll.len(), 6);
        let first = &tokens[..8];
        let stats = token_stats(&tf, first, 1, &mut |_, _| {}).unwrap();
        let mean0 = stats.nll.iter().sum::<f64>() / 7.0;
        assert!((p.window_nll[0] - mean0).abs() < 1e-6);
        assert!((p.ppl - p.mean_nll.exp()).abs() < 1e-9);
        assert!(windows(&tokens, 100).is_err());
        // One comparison of several models gives each model's own KL and perplexity.
        let c = compare(&tf, &[&tq, &tf], &tokens, 8, 4, &mut |_| {}).unwrap();
        assert!((c.original.mean_nll - p.mean_nll).abs() < 1e-9);
        assert_eq!(c.models[0].0, kl);
        let pq = perplexity(&tq, &tokens, 8, 4).unwrap();
        assert!((c.models[0].1.mean_nll - pq.mean_nll).abs() < 1e-9);
        assert!(c.models[1].0.mean.abs() < 1e-6);
        assert!((c.models[1].1.mean_nll - p.mean_nll).abs() < 1e-9);
        // Block by block in chunks of 2 windows (each block read three times) gives the same numbers,
        // and a candidate that swaps in the noisy block on the fly is the noisy model.
        let swap = |i: usize, _: &LayerWeights<f32>| noisy.layers.get(i);
        let c2 = compare_blocks(&tf, &[&swap], &tokens, 8, 2, 2, &mut |_| {}).unwrap();
        let c4 = compare(&tf, &[&tq], &tokens, 8, 2, &mut |_| {}).unwrap();
        assert_eq!(c2, c4);
        assert!((c2.models[0].0.mean - kl.mean).abs() < 1e-9);
    }
}
