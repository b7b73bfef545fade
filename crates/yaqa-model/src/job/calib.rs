//! Calibration sequences: windows cut from text files, or sequences sampled from the model itself.
//!
//! Sketches are sums over sequences (DESIGN.md §2), so a calibration set is a list of numbered
//! sequences, and a shard `I/N` is simply the sequences whose number is `I mod N`: the union of the `N`
//! shards is exactly the unsharded set, whichever machines ran them. Everything is seeded and recorded.
//!
//! *Text mode* tokenizes the files (in the order given, no special tokens), cuts the token stream into
//! non-overlapping windows of `seq_len` tokens, shuffles the window order with the seed and keeps the
//! first `n_seqs`. *Data-free mode* (DESIGN.md §7: a user may have no text at all) samples each sequence
//! from the model at temperature 1, starting from the BOS token, with an incremental (KV-cached) decoder
//! so a sequence of `L` tokens costs `L` token-forwards rather than `L²/2`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use yaqa_core::model_ops::{ModelOps, RopeParams};
use yaqa_core::{Mat, Rng};

use crate::error::{ModelError, Result};
use crate::transformer::decoder::Transformer;
use crate::transformer::tokenizer::Tokenizer;

/// One shard `index/count` of a calibration set (`index` in `0..count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    /// The whole set (`0/1`).
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Whether sequence number `seq` belongs to this shard.
    pub fn contains(&self, seq: usize) -> bool {
        seq % self.count == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// Parses `I/N` with `0 ≤ I < N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard {s:?} is not of the form I/N (for example 0/4)"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("shard index {i:?} is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("shard count {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "shard {s:?}: need 0 ≤ I < N (shards are numbered from 0)"
            ));
        }
        Ok(Self { index, count })
    }
}

/// One calibration sequence and its number in the unsharded set (which also seeds its Fisher labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalibSeq {
    pub index: usize,
    pub ids: Vec<u32>,
    /// Fisher labels to take the gradients against, one per token, when they were given with the
    /// sequence (a calibration file's `labels`); `None` means they are sampled from the model with
    /// [`crate::job::collect::label_seed`].
    pub labels: Option<Vec<u32>>,
}

/// Tokenizes the calibration files in order and concatenates their tokens.
///
/// **Errors**: an unreadable or non-UTF-8 file (named), or a tokenizer failure.
pub fn text_tokens(tokenizer: &Tokenizer, files: &[impl AsRef<Path>]) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    for file in files {
        let path = file.as_ref();
        let text = crate::formats::read_text(path)?;
        tokens.extend(tokenizer.encode(&text)?);
    }
    Ok(tokens)
}

/// `n_seqs` windows of `seq_len` tokens from `tokens` (non-overlapping, order shuffled by `seed` with the
/// stream `"calib-windows"`), keeping those of `shard`.
///
/// **Errors**: `seq_len < 2`, no tokens, or fewer than `n_seqs` whole windows in the text (saying
/// which).
pub fn text_windows(
    tokens: &[u32],
    seq_len: usize,
    n_seqs: usize,
    seed: u64,
    shard: Shard,
) -> Result<Vec<CalibSeq>> {
    if seq_len < 2 {
        return Err(ModelError::Input(format!(
            "calibration sequences need at least 2 tokens, got seq_len {seq_len}"
        )));
    }
    let available = tokens.len() / seq_len;
    if tokens.is_empty() {
        return Err(ModelError::Input(
            "the text holds no tokens (an empty file, or only whitespace)".into(),
        ));
    }
    if available == 0 {
        return Err(ModelError::Input(format!(
            "the text has {} tokens, fewer than one sequence of {seq_len}: give more text or shorter \
             sequences",
            tokens.len()
        )));
    }
    if available < n_seqs {
        return Err(ModelError::Input(format!(
            "the text has {} tokens: {available} sequences of {seq_len}, fewer than the {n_seqs} asked \
             for: give more text, or fewer or shorter sequences",
            tokens.len()
        )));
    }
    // Fisher–Yates over the window numbers with the recorded seed.
    let mut order: Vec<usize> = (0..available).collect();
    let mut rng = Rng::derive(seed, "calib-windows");
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    Ok(order[..n_seqs]
        .iter()
        .enumerate()
        .filter(|(index, _)| shard.contains(*index))
        .map(|(index, &w)| CalibSeq {
            index,
            ids: tokens[w * seq_len..(w + 1) * seq_len].to_vec(),
            labels: None,
        })
        .collect())
}

/// The key/value cache of one decoder block: `batch` sequences, `len` positions, `kv_dim` values each.
struct BlockCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// Draws one index from the softmax of `row` (temperature 1) with one uniform from `rng`, computing the
/// weights as [`Transformer::sample_labels`] does (f32 `exp` of the max-shifted logit, f64 sums).
pub fn sample_softmax(row: &[f32], rng: &mut Rng) -> u32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = row
        .iter()
        .map(|&v| ((v as f64 - max) as f32).exp() as f64)
        .collect();
    let total: f64 = weights.iter().sum();
    let target = rng.next_f64() * total;
    let mut acc = 0.0;
    for (j, w) in weights.iter().enumerate() {
        acc += w;
        if acc > target {
            return j as u32;
        }
    }
    (weights.len() - 1) as u32
}

/// An incremental decoder over [`ModelOps`]: feeds one token per sequence per step and returns the
/// logits of that position, keeping each block's keys and values.
pub struct Decoder<'t, 'a, B: ModelOps<f32>> {
    tf: &'t Transformer<'a, f32, B>,
    inv_freq: Vec<f32>,
    batch: usize,
    pos: usize,
    cache: Vec<BlockCache>,
}

impl<B: ModelOps<f32>> fmt::Debug for Decoder<'_, '_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("batch", &self.batch)
            .field("pos", &self.pos)
            .finish()
    }
}

impl<'t, 'a, B: ModelOps<f32>> Decoder<'t, 'a, B> {
    /// An empty cache for `batch` sequences.
    pub fn new(tf: &'t Transformer<'a, f32, B>, batch: usize) -> Self {
        let layers = tf.model.layers.len();
        Self {
            tf,
            inv_freq: tf.model.config.inv_freq(),
            batch,
            pos: 0,
            cache: (0..layers)
                .map(|_| BlockCache {
                    k: vec![Vec::new(); batch],
                    v: vec![Vec::new(); batch],
                })
                .collect(),
        }
    }

    /// Rotates every head of every row of `x` to position `self.pos` (rotate-half, the angles of
    /// [`RopeParams::angle`]).
    fn rope_at(&self, x: &mut Mat<f32>) {
        let hd = self.tf.model.config.head_dim;
        let params = RopeParams {
            seq: self.pos + 1,
            head_dim: hd,
            inv_freq: &self.inv_freq,
        };
        let half = hd / 2;
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..half)
            .map(|i| {
                let a = params.angle(self.pos, i);
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip();
        for head in x.data.chunks_mut(hd) {
            let (lo, hi) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }

    fn head_norm(&self, m: Mat<f32>, weight: &[f32]) -> Result<Mat<f32>> {
        let c = &self.tf.model.config;
        let (rows, cols) = m.shape();
        let flat = Mat {
            rows: rows * cols / c.head_dim,
            cols: c.head_dim,
            data: m.data,
        };
        let y = self.tf.ops.rms_norm(&flat, weight, c.rms_norm_eps)?;
        Ok(Mat {
            rows,
            cols,
            data: y.data,
        })
    }

    /// Feeds `tokens[b]` to sequence `b` at the next position and returns the logits (`batch × vocab`).
    ///
    /// **Errors**: a wrong number of tokens, ids out of range, positions past the sliding window.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Mat<f32>> {
        let c = &self.tf.model.config;
        if tokens.len() != self.batch {
            return Err(ModelError::Input(format!(
                "decoder step: {} tokens for {} sequences",
                tokens.len(),
                self.batch
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} ≥ vocab size {}",
                c.vocab_size
            )));
        }
        if c.sliding_window.is_some_and(|w| self.pos >= w) {
            return Err(ModelError::Input(
                "decoding past the sliding window is not implemented".into(),
            ));
        }
        let ops = self.tf.ops;
        let eps = c.rms_norm_eps;
        let (hd, group) = (c.head_dim, c.n_heads / c.n_kv_heads.max(1));
        let scale = 1.0 / (hd as f64).sqrt();
        let mut h = self.tf.embed(tokens);
        for li in 0..self.tf.model.layers.len() {
            let l = self.tf.model.layers.get(li)?;
            let xn1 = ops.rms_norm(&h, &l.input_norm, eps)?;
            let mut q = ops.linear(&xn1, &l.q_proj, l.q_bias.as_deref())?;
            let mut k = ops.linear(&xn1, &l.k_proj, l.k_bias.as_deref())?;
            let v = ops.linear(&xn1, &l.v_proj, l.v_bias.as_deref())?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                q = self.head_norm(q, qn)?;
                k = self.head_norm(k, kn)?;
            }
            self.rope_at(&mut q);
            self.rope_at(&mut k);
            let kv_dim = k.cols;
            let cache = &mut self.cache[li];
            let mut attn = Mat::zeros(self.batch, q.cols);
            for b in 0..self.batch {
                cache.k[b].extend_from_slice(k.row(b));
                cache.v[b].extend_from_slice(v.row(b));
                let (keys, values) = (&cache.k[b], &cache.v[b]);
                let len = keys.len() / kv_dim;
                let q_row = q.row(b);
                let out = attn.row_mut(b);
                for head in 0..c.n_heads {
                    let kv = head / group;
                    let qh = &q_row[head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..len)
                        .map(|t| {
                            let kt = &keys[t * kv_dim + kv * hd..t * kv_dim + (kv + 1) * hd];
                            qh.iter()
                                .zip(kt)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = p.iter().sum();
                    let oh = &mut out[head * hd..(head + 1) * hd];
                    for (d, o) in oh.iter_mut().enumerate() {
                        let mut acc = 0.0;
                        for (t, pt) in p.iter().enumerate() {
                            acc += pt * values[t * kv_dim + kv * hd + d] as f64;
                        }
                        *o = (acc / total) as f32;
                    }
                }
            }
            let o = ops.linear(&attn, &l.o_proj, None)?;
            let h_mid = add(&h, &o);
            let xn2 = ops.rms_norm(&h_mid, &l.post_norm, eps)?;
            let gate = ops.linear(&xn2, &l.gate_proj, None)?;
            let up = ops.linear(&xn2, &l.up_proj, None)?;
            let act = ops.swiglu(&gate, &up)?;
            h = add(&h_mid, &ops.linear(&act, &l.down_proj, None)?);
        }
        self.pos += 1;
        let hidden = ops.rms_norm(&h, &self.tf.model.norm, eps)?;
        Ok(ops.linear(&hidden, self.tf.model.head(), None)?)
    }
}

fn add(a: &Mat<f32>, b: &Mat<f32>) -> Mat<f32> {
    Mat {
        rows: a.rows,
        cols: a.cols,
        data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
    }
}

/// Data-free calibration: the sequences of `shard` among `n_seqs` sequences of `seq_len` tokens sampled
/// from the model at temperature 1, each starting with `bos`. Sequence `i` draws its tokens from the
/// stream `Rng::derive(seed, "calib-sample/i")`, so it does not depend on which other sequences are
/// sampled with it; up to `batch` sequences are decoded together. `progress(done)` is called after each
/// finished group with the number of sequences done so far.
///
/// **Errors**: `seq_len < 2`, `bos` out of range, or any forward error.
pub fn sample_sequences<B: ModelOps<f32>>(
    tf: &Transformer<'_, f32, B>,
    n_seqs: usize,
    seq_len: usize,
    seed: u64,
    shard: Shard,
    bos: u32,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<CalibSeq>> {
    if seq_len < 2 {
        return Err(ModelError::Input(format!(
            "calibration sequences need at least 2 tokens, got seq_len {seq_len}"
        )));
    }
    let mine: Vec<usize> = (0..n_seqs).filter(|&i| shard.contains(i)).collect();
    let mut out = Vec::with_capacity(mine.len());
    for group in mine.chunks(batch.max(1)) {
        let mut rngs: Vec<Rng> = group
            .iter()
            .map(|i| Rng::derive(seed, &format!("calib-sample/{i}")))
            .collect();
        let mut seqs: Vec<Vec<u32>> = vec![vec![bos]; group.len()];
        let mut decoder = Decoder::new(tf, group.len());
        while seqs[0].len() < seq_len {
            let last: Vec<u32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
            let logits = decoder.step(&last)?;
            for (b, (s, rng)) in seqs.iter_mut().zip(&mut rngs).enumerate() {
                s.push(sample_softmax(logits.row(b), rng));
            }
        }
        out.extend(group.iter().zip(seqs).map(|(&index, ids)| CalibSeq {
            index,
            ids,
            labels: None,
        }));
        progress(out.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::config::Family;
    use crate::transformer::weights::{Model, tiny_config};
    use yaqa_core::reference::Reference;

    #[test]
    fn shards_parse_and_partition() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        let tokens: Vec<u32> = (0..1000).collect();
        let all = text_windows(&tokens, 10, 30, 5, Shard::default()).unwrap();
        assert_eq!(all.len(), 30);
        // Non-overlapping windows of consecutive tokens, aligned to multiples of seq_len.
        let mut starts: Vec<u32> = all.iter().map(|s| s.ids[0]).collect();
        starts.sort();
        starts.dedup();
        assert_eq!(starts.len(), 30);
        assert!(
            all.iter()
                .all(|s| s.ids[0] % 10 == 0 && s.ids[9] == s.ids[0] + 9)
        );
        // Shuffled: not simply the first 30 windows.
        assert_ne!(starts, (0..30).map(|w| w * 10).collect::<Vec<u32>>());
        // The shards together are the whole set.
        let mut union: Vec<CalibSeq> = (0..3)
            .flat_map(|i| text_windows(&tokens, 10, 30, 5, Shard { index: i, count: 3 }).unwrap())
            .collect();
        union.sort_by_key(|s| s.index);
        assert_eq!(union, all);
        assert_eq!(
            text_windows(&tokens, 10, 30, 5, Shard::default()).unwrap(),
            all
        );
        assert_ne!(
            text_windows(&tokens, 10, 30, 6, Shard::default()).unwrap(),
            all
        );
        assert!(text_windows(&tokens, 10, 101, 5, Shard::default()).is_err());
    }

    #[test]
    fn decoder_matches_the_full_forward() {
        for family in [Family::Llama, Family::Qwen2, Family::Qwen3] {
            let model = Model::synthetic(tiny_config(family, true), 3);
            let tf = Transformer::new(&model, &Reference);
            let ids: Vec<u32> = vec![1, 5, 9, 30, 2, 7, 7, 11, 0, 36, 1, 4];
            let seq = 6;
            let hidden = tf.forward(&ids, 2, &mut |_, _| {}).unwrap();
            let head32 = model.head();
            let full = Reference.linear(&hidden, head32, None).unwrap();
            let mut dec = Decoder::new(&tf, 2);
            let mut worst = 0.0f64;
            for t in 0..seq {
                let step = dec.step(&[ids[t], ids[seq + t]]).unwrap();
                for b in 0..2 {
                    for (x, y) in step.row(b).iter().zip(full.row(b * seq + t)) {
                        worst = worst.max((x - y).abs() as f64);
                    }
                }
            }
            // Both run in f32 with different summation orders in attention: a few ulps of logits ~1.
            assert!(worst < 1e-4, "{family:?}: worst logit difference {worst}");
        }
    }

    #[test]
    fn sampling_is_seeded_and_shardable() {
        let model = Model::synthetic(tiny_config(Family::Llama, true), 4);
        let tf = Transformer::new(&model, &Reference);
        let run = |seed, shard, batch| {
            sample_sequences(&tf, 5, 7, seed, shard, 1, batch, &mut |_| {}).unwrap()
        };
        let all = run(9, Shard::default(), 5);
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|s| s.ids.len() == 7 && s.ids[0] == 1));
        assert_eq!(run(9, Shard::default(), 5), all);
        assert_ne!(run(10, Shard::default(), 5), all);
        // Per-sequence streams: batching and sharding do not change a sequence.
        assert_eq!(run(9, Shard::default(), 2), all);
        let odd = run(9, Shard { index: 1, count: 2 }, 5);
        assert_eq!(odd, vec![all[1].clone(), all[3].clone()]);
        // Sequences differ from one another (the model is not degenerate).
        assert_ne!(all[0].ids, all[1].ids);
    }
}
