//! The weights of a Llama-family decoder under Hugging Face names, and loading them from any checkpoint.
//!
//! Checkpoint readers (GGUF, safetensors) only answer "give me the f32 values of the tensor with this
//! HF name"; [`Model::load`] asks for every tensor the configuration needs, checks its shape and
//! names the file and tensor in every error. The linear layers that quantization works on are addressed
//! by [`LinearKind`] and a layer index.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use yaqa_core::Mat;
use yaqa_core::model_ops::Real;

use crate::error::{ModelError, Result};
use crate::formats::gguf::{GgufFile, gguf_to_hf_name, unpermute_rows};
use crate::transformer::blocks::{BlockLoader, Blocks};
use crate::transformer::config::{Family, ModelConfig};

/// The seven linear layers of a decoder block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    /// All seven, in the true-sequential order of DESIGN.md §9 within each group.
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// The module path inside a layer (`self_attn.q_proj`).
    pub fn module(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// The weight's `(rows, cols)` = `(out, in)` under `config` (head widths saturate: a configuration
    /// that overflows them was refused by [`ModelConfig::validate`] or fails the shape checks).
    pub fn shape(self, config: &ModelConfig) -> (usize, usize) {
        let c = config;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let qd = c.n_heads.saturating_mul(c.head_dim);
        let kd = c.n_kv_heads.saturating_mul(c.head_dim);
        match self {
            Self::Q => (qd, d),
            Self::K | Self::V => (kd, d),
            Self::O => (d, qd),
            Self::Gate | Self::Up => (f, d),
            Self::Down => (d, f),
        }
    }

    /// The Hugging Face weight name of this linear in layer `layer`.
    pub fn hf_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.weight", self.module())
    }
}

/// One decoder block.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights<T> {
    pub input_norm: Vec<T>,
    pub q_proj: Mat<T>,
    pub k_proj: Mat<T>,
    pub v_proj: Mat<T>,
    pub o_proj: Mat<T>,
    pub q_bias: Option<Vec<T>>,
    pub k_bias: Option<Vec<T>>,
    pub v_bias: Option<Vec<T>>,
    /// Qwen3's per-head RMSNorm weights (`head_dim` values).
    pub q_norm: Option<Vec<T>>,
    pub k_norm: Option<Vec<T>>,
    pub post_norm: Vec<T>,
    pub gate_proj: Mat<T>,
    pub up_proj: Mat<T>,
    pub down_proj: Mat<T>,
}

impl<T: Clone> LayerWeights<T> {
    /// This block with each linear layer for which `replace` returns a matrix replaced by it; norms,
    /// biases and the other layers copied. The caller checks the shapes.
    ///
    /// **Errors**: the first error of `replace`.
    pub fn with_linears(
        &self,
        mut replace: impl FnMut(LinearKind) -> Result<Option<Mat<T>>>,
    ) -> Result<Self> {
        let mut lin = |kind: LinearKind| -> Result<Mat<T>> {
            Ok(replace(kind)?.unwrap_or_else(|| self.linear(kind).clone()))
        };
        Ok(Self {
            q_proj: lin(LinearKind::Q)?,
            k_proj: lin(LinearKind::K)?,
            v_proj: lin(LinearKind::V)?,
            o_proj: lin(LinearKind::O)?,
            gate_proj: lin(LinearKind::Gate)?,
            up_proj: lin(LinearKind::Up)?,
            down_proj: lin(LinearKind::Down)?,
            input_norm: self.input_norm.clone(),
            post_norm: self.post_norm.clone(),
            q_bias: self.q_bias.clone(),
            k_bias: self.k_bias.clone(),
            v_bias: self.v_bias.clone(),
            q_norm: self.q_norm.clone(),
            k_norm: self.k_norm.clone(),
        })
    }
}

impl<T> LayerWeights<T> {
    /// The weight of one linear layer.
    pub fn linear(&self, kind: LinearKind) -> &Mat<T> {
        match kind {
            LinearKind::Q => &self.q_proj,
            LinearKind::K => &self.k_proj,
            LinearKind::V => &self.v_proj,
            LinearKind::O => &self.o_proj,
            LinearKind::Gate => &self.gate_proj,
            LinearKind::Up => &self.up_proj,
            LinearKind::Down => &self.down_proj,
        }
    }

    /// The weight of one linear layer, mutably (to install quantized weights).
    pub fn linear_mut(&mut self, kind: LinearKind) -> &mut Mat<T> {
        match kind {
            LinearKind::Q => &mut self.q_proj,
            LinearKind::K => &mut self.k_proj,
            LinearKind::V => &mut self.v_proj,
            LinearKind::O => &mut self.o_proj,
            LinearKind::Gate => &mut self.gate_proj,
            LinearKind::Up => &mut self.up_proj,
            LinearKind::Down => &mut self.down_proj,
        }
    }

    /// The number of values the block holds (every weight, norm and bias).
    pub fn len(&self) -> usize {
        let opt = |v: &Option<Vec<T>>| v.as_ref().map_or(0, Vec::len);
        LinearKind::ALL
            .iter()
            .map(|&k| self.linear(k).data.len())
            .sum::<usize>()
            + self.input_norm.len()
            + self.post_norm.len()
            + opt(&self.q_bias)
            + opt(&self.k_bias)
            + opt(&self.v_bias)
            + opt(&self.q_norm)
            + opt(&self.k_norm)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor under its Hugging Face name, with its row-major shape and values.
pub type HfTensor<'a, T> = (String, Vec<usize>, &'a [T]);

/// A whole decoder: configuration plus weights in element type `T`.
#[derive(Clone, Debug, PartialEq)]
pub struct Model<T = f32> {
    pub config: ModelConfig,
    /// `vocab × hidden`; also the LM head when `lm_head` is `None` (tied).
    pub embed: Mat<T>,
    /// The decoder blocks, resident or streamed from the checkpoint ([`Blocks`]).
    pub layers: Blocks<LayerWeights<T>>,
    pub norm: Vec<T>,
    pub lm_head: Option<Mat<T>>,
    /// The blocks whose linear layers jobs collect factors for ([`LayerId::all`]): all of them unless a
    /// run works on one layer group (`hessian --layers A..B`). The passes still run through every
    /// block; the backward stops below the group and a forward-only pass after it.
    pub selected: Range<usize>,
}

/// A checkpoint that can produce f32 tensors by Hugging Face name.
pub trait TensorSource: std::fmt::Debug {
    /// The file that holds (or would hold) `name`, for error messages.
    fn file_of(&self, name: &str) -> PathBuf;
    /// The row-major shape and values of `name`, or `None` if the checkpoint lacks it.
    fn load(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>>;
    /// The row-major shape of `name` from the file's header (no data read), or `None` if it lacks it.
    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>>;
    /// The highest decoder block any tensor of the checkpoint belongs to, with the name (as the
    /// checkpoint spells it) of a tensor of that block; `None` when no tensor belongs to a block.
    fn last_block(&self) -> Option<(usize, String)>;
    /// Where the configuration's number of blocks comes from, for messages (`num_hidden_layers in
    /// …/config.json`).
    fn layer_count_key(&self) -> String;
}

/// The block of a tensor named `<prefix><block>.<rest>`, such as `model.layers.3.mlp.up_proj.weight`.
pub fn block_of(name: &str, prefix: &str) -> Option<usize> {
    let (block, _) = name.strip_prefix(prefix)?.split_once('.')?;
    block.parse().ok()
}

/// The highest block among `names` (see [`block_of`]) with one tensor of it.
pub fn last_block<'a>(
    names: impl IntoIterator<Item = &'a str>,
    prefix: &str,
) -> Option<(usize, String)> {
    names
        .into_iter()
        .filter_map(|n| block_of(n, prefix).map(|b| (b, n)))
        // The smallest name of the highest block, so that the message does not depend on map order.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(b, n)| (b, n.to_string()))
}

/// Refuses a tensor holding infinities or NaNs, counting them: one pass over the values, spread over
/// the threads.
///
/// **Errors**: [`ModelError::NonFinite`] naming `path`, `tensor`, the count and the first one.
pub fn check_finite(path: &Path, tensor: &str, data: &[f32]) -> Result<()> {
    use rayon::prelude::*;
    let count = data
        .par_chunks(1 << 16)
        .map(|c| c.iter().filter(|v| !v.is_finite()).count())
        .sum::<usize>();
    if count == 0 {
        return Ok(());
    }
    let index = data.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Err(ModelError::NonFinite {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        count,
        len: data.len(),
        first: data[index],
        index,
    })
}

fn map_mat<T: Copy, U>(m: &Mat<T>, f: impl Fn(T) -> U) -> Mat<U> {
    Mat {
        rows: m.rows,
        cols: m.cols,
        data: m.data.iter().map(|&v| f(v)).collect(),
    }
}

fn map_vec<T: Copy, U>(v: &[T], f: impl Fn(T) -> U) -> Vec<U> {
    v.iter().map(|&x| f(x)).collect()
}

impl<T: Real> Model<T> {
    /// The same model in another element type (f32 → f64 for gradient checks is exact), resident.
    ///
    /// **Errors**: a streamed model's loader errors.
    pub fn cast<U: Real>(&self) -> Result<Model<U>> {
        let f = |v: T| U::from_f64(v.to_f64());
        let mut layers = Vec::new();
        for i in 0..self.layers.len() {
            let l = self.layers.get(i)?;
            layers.push(LayerWeights {
                input_norm: map_vec(&l.input_norm, f),
                q_proj: map_mat(&l.q_proj, f),
                k_proj: map_mat(&l.k_proj, f),
                v_proj: map_mat(&l.v_proj, f),
                o_proj: map_mat(&l.o_proj, f),
                q_bias: l.q_bias.as_deref().map(|b| map_vec(b, f)),
                k_bias: l.k_bias.as_deref().map(|b| map_vec(b, f)),
                v_bias: l.v_bias.as_deref().map(|b| map_vec(b, f)),
                q_norm: l.q_norm.as_deref().map(|b| map_vec(b, f)),
                k_norm: l.k_norm.as_deref().map(|b| map_vec(b, f)),
                post_norm: map_vec(&l.post_norm, f),
                gate_proj: map_mat(&l.gate_proj, f),
                up_proj: map_mat(&l.up_proj, f),
                down_proj: map_mat(&l.down_proj, f),
            });
        }
        Ok(Model {
            config: self.config.clone(),
            embed: map_mat(&self.embed, f),
            layers: Blocks::resident(layers),
            norm: map_vec(&self.norm, f),
            lm_head: self.lm_head.as_ref().map(|m| map_mat(m, f)),
            selected: self.selected.clone(),
        })
    }

    /// The LM head (`vocab × hidden`): `lm_head` or, when tied, the embedding.
    pub fn head(&self) -> &Mat<T> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every tensor under its Hugging Face name with its row-major shape (tied heads are not repeated).
    ///
    /// **Errors**: a streamed model, whose blocks are not in memory to be borrowed.
    pub fn hf_tensors(&self) -> Result<Vec<HfTensor<'_, T>>> {
        let layers = self.layers.as_resident().ok_or_else(|| {
            ModelError::Input(
                "the tensors of a streamed model cannot be listed at once; load it resident".into(),
            )
        })?;
        let mut out: Vec<HfTensor<'_, T>> = Vec::new();
        let mat = |m: &Mat<T>| vec![m.rows, m.cols];
        out.push((
            "model.embed_tokens.weight".into(),
            mat(&self.embed),
            &self.embed.data,
        ));
        for (i, l) in layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                vec![l.input_norm.len()],
                &l.input_norm,
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![l.post_norm.len()],
                &l.post_norm,
            ));
            for kind in LinearKind::ALL {
                let m = l.linear(kind);
                out.push((kind.hf_name(i), mat(m), &m.data));
            }
            for (name, v) in [
                ("self_attn.q_proj.bias", &l.q_bias),
                ("self_attn.k_proj.bias", &l.k_bias),
                ("self_attn.v_proj.bias", &l.v_bias),
                ("self_attn.q_norm.weight", &l.q_norm),
                ("self_attn.k_norm.weight", &l.k_norm),
            ] {
                if let Some(v) = v {
                    out.push((format!("{p}.{name}"), vec![v.len()], v));
                }
            }
        }
        out.push((
            "model.norm.weight".into(),
            vec![self.norm.len()],
            &self.norm,
        ));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), mat(h), &h.data));
        }
        Ok(out)
    }
}

/// The widths of a configuration's projections, `(q, kv)` = heads × head_dim, checked: a configuration
/// read from a file was validated ([`ModelConfig::validate`]), one built in code may not have been.
fn head_widths(c: &ModelConfig) -> Result<(usize, usize)> {
    let width = |heads: usize, what: &str| {
        heads.checked_mul(c.head_dim).ok_or_else(|| {
            ModelError::Input(format!(
                "{what} {heads} × head_dim {} overflows",
                c.head_dim
            ))
        })
    };
    Ok((
        width(c.n_heads, "num_attention_heads")?,
        width(c.n_kv_heads, "num_key_value_heads")?,
    ))
}

/// A tensor of `source` with the shape `expected`, every value finite.
fn get_tensor(source: &dyn TensorSource, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
    let (shape, data) = source
        .load(name)?
        .ok_or_else(|| ModelError::MissingTensor {
            path: source.file_of(name),
            tensor: name.to_string(),
        })?;
    if shape != expected {
        return Err(ModelError::ShapeMismatch {
            path: source.file_of(name),
            tensor: name.to_string(),
            expected: expected.to_vec(),
            found: shape,
        });
    }
    check_finite(&source.file_of(name), name, &data)?;
    Ok(data)
}

fn get_mat(source: &dyn TensorSource, name: &str, rows: usize, cols: usize) -> Result<Mat<f32>> {
    Ok(Mat {
        rows,
        cols,
        data: get_tensor(source, name, &[rows, cols])?,
    })
}

/// Every tensor name of block `index` with its expected shape, optional ones only when `config` has them.
pub fn block_tensors(config: &ModelConfig, index: usize) -> Result<Vec<(String, Vec<usize>)>> {
    let c = config;
    let (d, hd) = (c.hidden_size, c.head_dim);
    let (qd, kd) = head_widths(c)?;
    let p = format!("model.layers.{index}");
    let mut v = vec![
        (format!("{p}.input_layernorm.weight"), vec![d]),
        (format!("{p}.post_attention_layernorm.weight"), vec![d]),
    ];
    for kind in LinearKind::ALL {
        let (rows, cols) = kind.shape(c);
        v.push((kind.hf_name(index), vec![rows, cols]));
    }
    if c.attention_bias {
        v.push((format!("{p}.self_attn.q_proj.bias"), vec![qd]));
        v.push((format!("{p}.self_attn.k_proj.bias"), vec![kd]));
        v.push((format!("{p}.self_attn.v_proj.bias"), vec![kd]));
    }
    if c.qk_norm {
        v.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
        v.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
    }
    Ok(v)
}

/// Reads and widens block `index` of `source`, checked like [`Model::load`].
///
/// **Errors**: as [`Model::load`], for this block's tensors.
pub fn load_block(
    config: &ModelConfig,
    source: &dyn TensorSource,
    index: usize,
) -> Result<LayerWeights<f32>> {
    let c = config;
    let d = c.hidden_size;
    let (qd, kd) = head_widths(c)?;
    let p = format!("model.layers.{index}");
    let opt = |on: bool, name: &str, len: usize| -> Result<Option<Vec<f32>>> {
        if on {
            get_tensor(source, &format!("{p}.{name}"), &[len]).map(Some)
        } else {
            Ok(None)
        }
    };
    let lin = |kind: LinearKind| {
        let (rows, cols) = kind.shape(c);
        get_mat(source, &kind.hf_name(index), rows, cols)
    };
    Ok(LayerWeights {
        input_norm: get_tensor(source, &format!("{p}.input_layernorm.weight"), &[d])?,
        q_proj: lin(LinearKind::Q)?,
        k_proj: lin(LinearKind::K)?,
        v_proj: lin(LinearKind::V)?,
        o_proj: lin(LinearKind::O)?,
        q_bias: opt(c.attention_bias, "self_attn.q_proj.bias", qd)?,
        k_bias: opt(c.attention_bias, "self_attn.k_proj.bias", kd)?,
        v_bias: opt(c.attention_bias, "self_attn.v_proj.bias", kd)?,
        q_norm: opt(c.qk_norm, "self_attn.q_norm.weight", c.head_dim)?,
        k_norm: opt(c.qk_norm, "self_attn.k_norm.weight", c.head_dim)?,
        post_norm: get_tensor(
            source,
            &format!("{p}.post_attention_layernorm.weight"),
            &[d],
        )?,
        gate_proj: lin(LinearKind::Gate)?,
        up_proj: lin(LinearKind::Up)?,
        down_proj: lin(LinearKind::Down)?,
    })
}

/// The blocks of a checkpoint, read and widened one at a time ([`Blocks::streamed`]).
#[derive(Debug)]
pub struct SourceBlocks {
    pub config: ModelConfig,
    pub source: Arc<dyn TensorSource + Send + Sync>,
}

impl BlockLoader<LayerWeights<f32>> for SourceBlocks {
    fn load(&self, index: usize) -> Result<LayerWeights<f32>> {
        load_block(&self.config, &*self.source, index)
    }
}

/// Refuses a checkpoint with blocks beyond `config.n_layers`, before any tensor is read.
fn check_block_count(config: &ModelConfig, source: &dyn TensorSource) -> Result<()> {
    if let Some((block, tensor)) = source.last_block()
        && block >= config.n_layers
    {
        return Err(ModelError::ExtraBlocks {
            path: source.file_of(&tensor),
            tensor,
            present: block.saturating_add(1),
            declared: config.n_layers,
            key: source.layer_count_key(),
        });
    }
    Ok(())
}

impl Model<f32> {
    /// Loads every tensor `config` needs from `source`, checking shapes and that every value is finite.
    ///
    /// **Errors**: [`ModelError::ExtraBlocks`] for a checkpoint with blocks beyond `config.n_layers`
    /// (before any tensor is read), [`ModelError::MissingTensor`], [`ModelError::ShapeMismatch`] and
    /// [`ModelError::NonFinite`] naming file and tensor, plus whatever the source reports (truncation,
    /// unknown dtypes).
    pub fn load(config: ModelConfig, source: &dyn TensorSource) -> Result<Self> {
        check_block_count(&config, source)?;
        // Grown one block at a time: `n_layers` is not trusted with an allocation up front.
        let mut layers = Vec::new();
        for i in 0..config.n_layers {
            layers.push(load_block(&config, source, i)?);
        }
        Self::with_blocks(config, source, Blocks::resident(layers))
    }

    /// Like [`Model::load`], but the blocks stay in their file and are read and widened when a pass
    /// reaches them, the `keep` most recently used cached ([`Blocks::streamed`]). The embedding, final
    /// norm and head are loaded now; every block tensor's presence and shape is checked now (from the
    /// file's header), its values (finite) when it is first read.
    ///
    /// **Errors**: as [`Model::load`] for what is checked now.
    pub fn load_streamed(
        config: ModelConfig,
        source: Arc<dyn TensorSource + Send + Sync>,
        keep: usize,
    ) -> Result<Self> {
        check_block_count(&config, &*source)?;
        for i in 0..config.n_layers {
            for (name, expected) in block_tensors(&config, i)? {
                let shape = source
                    .shape(&name)?
                    .ok_or_else(|| ModelError::MissingTensor {
                        path: source.file_of(&name),
                        tensor: name.clone(),
                    })?;
                if shape != expected {
                    return Err(ModelError::ShapeMismatch {
                        path: source.file_of(&name),
                        tensor: name,
                        expected,
                        found: shape,
                    });
                }
            }
        }
        let loader = Arc::new(SourceBlocks {
            config: config.clone(),
            source: source.clone(),
        });
        let blocks = Blocks::streamed(config.n_layers, loader, keep);
        Self::with_blocks(config, &*source, blocks)
    }

    /// The embedding, final norm and head of `source` around `layers`.
    fn with_blocks(
        config: ModelConfig,
        source: &dyn TensorSource,
        layers: Blocks<LayerWeights<f32>>,
    ) -> Result<Self> {
        let (v, d) = (config.vocab_size, config.hidden_size);
        let embed = get_mat(source, "model.embed_tokens.weight", v, d)?;
        let norm = get_tensor(source, "model.norm.weight", &[d])?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(get_mat(source, "lm_head.weight", v, d)?)
        };
        let selected = 0..layers.len();
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            selected,
        })
    }

    /// Loads a Llama/Qwen2/Qwen3 GGUF as the exact f32 dequantization, Q/K rows un-permuted for `llama`.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let gguf = Arc::new(GgufFile::open(path)?);
        let config = ModelConfig::from_gguf(&gguf)?;
        let source = GgufSource::new(gguf, &config);
        Self::load(config.clone(), &source)
    }
}

/// A GGUF file seen through Hugging Face names.
#[derive(Debug)]
pub struct GgufSource {
    gguf: Arc<GgufFile>,
    hf_to_gguf: HashMap<String, String>,
    /// `(n_head, head_dim)` of the q and k projections when the llama.cpp permutation must be undone.
    unpermute: Option<((usize, usize), (usize, usize))>,
}

impl GgufSource {
    /// Indexes the file's tensors by HF name. Only `general.architecture = llama` files are permuted.
    pub fn new(gguf: Arc<GgufFile>, config: &ModelConfig) -> Self {
        let hf_to_gguf = gguf
            .tensors
            .iter()
            .filter_map(|t| gguf_to_hf_name(&t.name).map(|hf| (hf, t.name.clone())))
            .collect();
        let unpermute = (config.family == Family::Llama).then_some((
            (config.n_heads, config.head_dim),
            (config.n_kv_heads, config.head_dim),
        ));
        Self {
            gguf,
            hf_to_gguf,
            unpermute,
        }
    }
}

impl TensorSource for GgufSource {
    fn file_of(&self, _name: &str) -> PathBuf {
        self.gguf.path().to_path_buf()
    }

    fn load(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(gguf_name) = self.hf_to_gguf.get(name) else {
            return Ok(None);
        };
        let (shape, data) = self.gguf.tensor_f32(gguf_name)?;
        let heads = match self.unpermute {
            Some((q, _))
                if name.ends_with("self_attn.q_proj.weight")
                    || name.ends_with("self_attn.q_proj.bias") =>
            {
                Some(q)
            }
            Some((_, k))
                if name.ends_with("self_attn.k_proj.weight")
                    || name.ends_with("self_attn.k_proj.bias") =>
            {
                Some(k)
            }
            _ => None,
        };
        let data = match heads {
            None => data,
            Some((n_head, head_dim)) => {
                let rows = shape.first().copied().unwrap_or(0);
                let cols = shape.iter().skip(1).product::<usize>();
                unpermute_rows(&data, rows, cols, n_head, head_dim).map_err(|why| {
                    ModelError::ShapeMismatch {
                        path: self.gguf.path().to_path_buf(),
                        tensor: format!("{gguf_name} ({why})"),
                        expected: vec![n_head * head_dim, cols],
                        found: shape.clone(),
                    }
                })?
            }
        };
        Ok(Some((shape, data)))
    }

    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>> {
        Ok(self
            .hf_to_gguf
            .get(name)
            .and_then(|g| self.gguf.info(g))
            .map(|t| t.shape()))
    }

    fn last_block(&self) -> Option<(usize, String)> {
        last_block(self.gguf.tensors.iter().map(|t| t.name.as_str()), "blk.")
    }

    fn layer_count_key(&self) -> String {
        let arch = self
            .gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("llama");
        format!("{arch}.block_count in its metadata")
    }
}

impl Model<f32> {
    /// A random model of shape `config` for tests and benchmarks: Gaussian weights scaled by
    /// `1/sqrt(in)` with a decaying per-column profile (structured, never all zeros), norm weights near 1.
    pub fn synthetic(config: ModelConfig, seed: u64) -> Self {
        let mut rng = yaqa_core::Rng::derive(seed, "synthetic-model");
        let c = &config;
        fn mat(rng: &mut yaqa_core::Rng, rows: usize, cols: usize, scale: f64) -> Mat<f32> {
            Mat::from_fn(rows, cols, |_, j| {
                let profile = 1.0 / (1.0 + 4.0 * j as f64 / cols as f64);
                (rng.normal() * scale * profile / (cols as f64).sqrt()) as f32
            })
        }
        fn vector(rng: &mut yaqa_core::Rng, len: usize, center: f64, spread: f64) -> Vec<f32> {
            (0..len)
                .map(|_| (center + spread * rng.normal()) as f32)
                .collect()
        }
        let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (qd, kd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let embed = mat(&mut rng, c.vocab_size, d, (d as f64).sqrt());
        let mut layers = Vec::new();
        for _ in 0..c.n_layers {
            let q_proj = mat(&mut rng, qd, d, 1.5);
            let k_proj = mat(&mut rng, kd, d, 1.5);
            let v_proj = mat(&mut rng, kd, d, 1.0);
            let o_proj = mat(&mut rng, d, qd, 1.0);
            let gate_proj = mat(&mut rng, f, d, 1.0);
            let up_proj = mat(&mut rng, f, d, 1.0);
            let down_proj = mat(&mut rng, d, f, 1.0);
            layers.push(LayerWeights {
                input_norm: vector(&mut rng, d, 1.0, 0.1),
                q_bias: c.attention_bias.then(|| vector(&mut rng, qd, 0.0, 0.1)),
                k_bias: c.attention_bias.then(|| vector(&mut rng, kd, 0.0, 0.1)),
                v_bias: c.attention_bias.then(|| vector(&mut rng, kd, 0.0, 0.1)),
                q_norm: c.qk_norm.then(|| vector(&mut rng, hd, 1.0, 0.1)),
                k_norm: c.qk_norm.then(|| vector(&mut rng, hd, 1.0, 0.1)),
                post_norm: vector(&mut rng, d, 1.0, 0.1),
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = (0..d).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect();
        let lm_head = (!c.tie_word_embeddings).then(|| mat(&mut rng, c.vocab_size, d, 1.0));
        let selected = 0..layers.len();
        Self {
            config,
            embed,
            layers: Blocks::resident(layers),
            norm,
            lm_head,
            selected,
        }
    }
}

/// A tiny Llama-family configuration for tests: `family` decides biases (Qwen2) and q/k norms (Qwen3).
pub fn tiny_config(family: Family, tied: bool) -> ModelConfig {
    ModelConfig {
        family,
        vocab_size: 37,
        hidden_size: 16,
        intermediate_size: 24,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: crate::transformer::config::RopeScaling::None,
        // Above every default sequence and window length (512), so the jobs run on it with their defaults.
        max_position_embeddings: Some(512),
        tie_word_embeddings: tied,
        attention_bias: family == Family::Qwen2,
        qk_norm: family == Family::Qwen3,
        sliding_window: None,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// Identifies one linear layer: block index and kind. Ordered by block, then by [`LinearKind::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerId {
    pub block: usize,
    pub kind: LinearKind,
}

impl LayerId {
    /// Every linear layer of `model`'s selected blocks ([`Model::selected`]), in block order.
    pub fn all<T>(model: &Model<T>) -> Vec<LayerId> {
        model
            .selected
            .clone()
            .flat_map(|block| LinearKind::ALL.map(|kind| LayerId { block, kind }))
            .collect()
    }

    /// The Hugging Face module name, `model.layers.{block}.{module}` (no `.weight`).
    pub fn name(&self) -> String {
        format!("model.layers.{}.{}", self.block, self.kind.module())
    }

    /// Parses [`LayerId::name`] back.
    pub fn parse(name: &str) -> Option<LayerId> {
        let rest = name.strip_prefix("model.layers.")?;
        let (block, module) = rest.split_once('.')?;
        let block = block.parse().ok()?;
        let kind = LinearKind::ALL.into_iter().find(|k| k.module() == module)?;
        Some(LayerId { block, kind })
    }

    fn rank(&self) -> (usize, usize) {
        let k = LinearKind::ALL
            .iter()
            .position(|&k| k == self.kind)
            .unwrap_or(0);
        (self.block, k)
    }
}

impl PartialOrd for LayerId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LayerId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}
