//! Evaluation (DESIGN.md §6): next-token NLL and perplexity, and KL(original ‖ quantized) per position,
//! over non-overlapping windows of an evaluation text.
//!
//! Each window is an independent sequence (positions from 0), as in the fixture's perplexity protocol.
//! Logits are f32 (the models' precision); every reduction over the vocabulary is in f64.

use yaqa_core::Mat;
use yaqa_core::model_ops::{ModelOps, Real};

use crate::error::{ModelError, Result};
use crate::transformer::decoder::{Transformer, logsumexp};

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

/// KL to the original and perplexity of several models over the same windows, running the original once
/// per window and each model once (the KL and the perplexity come from the same logits).
/// `progress(windows_done)` is called after each group of windows.
///
/// **Errors**: a model whose vocabulary differs from the original's, or any forward error.
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
        .any(|q| q.model.config.vocab_size != original.model.config.vocab_size)
    {
        return Err(ModelError::Input(
            "the models have different vocabularies".into(),
        ));
    }
    let wins = windows(tokens, window)?;
    let mut kl: Vec<Vec<f64>> = vec![Vec::with_capacity(tokens.len()); quantized.len()];
    // Next-token NLL per window and model; index 0 is the original.
    let mut nll: Vec<Vec<f64>> = vec![Vec::with_capacity(wins.len()); quantized.len() + 1];
    let ops = original.ops;
    for group in wins.chunks(batch_windows.max(1)) {
        let ids: Vec<u32> = group.concat();
        let h_orig = original.forward(&ids, group.len(), &mut |_, _| {})?;
        let h_quant = quantized
            .iter()
            .map(|q| q.forward(&ids, group.len(), &mut |_, _| {}))
            .collect::<Result<Vec<_>>>()?;
        // Summed NLL of each window of this group, per model.
        let mut sums = vec![vec![0.0; group.len()]; quantized.len() + 1];
        let mut start = 0;
        while start < h_orig.rows {
            let end = (start + crate::transformer::decoder::HEAD_CHUNK).min(h_orig.rows);
            let head = |tf: &Transformer<'_, T, B>, h: &Mat<T>| {
                ops.linear(
                    &crate::transformer::decoder::rows_of(h, start, end),
                    tf.model.head(),
                    None,
                )
                .map_err(ModelError::from)
            };
            let lp = head(original, &h_orig)?;
            let lq = quantized
                .iter()
                .zip(&h_quant)
                .map(|(q, h)| head(q, h))
                .collect::<Result<Vec<_>>>()?;
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
        progress(nll[0].len());
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
    }
}
