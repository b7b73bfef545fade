//! Evaluation (DESIGN.md §6): next-token NLL and perplexity, and KL(original ‖ quantized) per position,
//! over non-overlapping windows of an evaluation text.
//!
//! Each window is an independent sequence (positions from 0), as in the fixture's perplexity protocol.
//! Logits are f32 (the models' precision); every reduction over the vocabulary is in f64.

use yaqa_core::Mat;
use yaqa_core::model_ops::{ModelOps, Real};

use crate::error::{ModelError, Result};
use crate::transformer::{Transformer, logsumexp};

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
    if original.model.config.vocab_size != quantized.model.config.vocab_size {
        return Err(ModelError::Input(
            "the two models have different vocabularies".into(),
        ));
    }
    let wins = windows(tokens, window)?;
    let mut per_position = Vec::with_capacity(wins.len() * window);
    for group in wins.chunks(batch_windows.max(1)) {
        let ids: Vec<u32> = group.concat();
        let h_orig = original.forward(&ids, group.len(), &mut |_, _| {})?;
        let h_quant = quantized.forward(&ids, group.len(), &mut |_, _| {})?;
        let mut start = 0;
        while start < h_orig.rows {
            let end = (start + crate::transformer::HEAD_CHUNK).min(h_orig.rows);
            let ops = original.ops;
            let lp = ops.linear(
                &crate::transformer::rows_of(&h_orig, start, end),
                original.model.head(),
                None,
            )?;
            let lq = ops.linear(
                &crate::transformer::rows_of(&h_quant, start, end),
                quantized.model.head(),
                None,
            )?;
            for r in 0..lp.rows {
                per_position.push(kl_row(lp.row(r), lq.row(r)));
            }
            start = end;
        }
    }
    let mean = per_position.iter().sum::<f64>() / per_position.len() as f64;
    Ok(KlReport { per_position, mean })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;
    use crate::weights::{Model, tiny_config};
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
    }
}
