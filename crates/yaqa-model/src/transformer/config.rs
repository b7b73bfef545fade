//! The configuration of a Llama-family decoder, read from a Hugging Face `config.json` or GGUF metadata.
//!
//! One struct covers Llama 2/3 (with Llama-3 RoPE scaling), Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k
//! RMS norms) and SmolLM2 (a Llama with tied embeddings). `config.json` files in the wild carry RoPE
//! settings either in the older `rope_theta` + `rope_scaling` fields or in the newer `rope_parameters`
//! object; both are read, and [`ModelConfig::to_hf_json`] writes both so old and new readers agree.

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufFile;

/// The model families this crate runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    /// The Hugging Face `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// The Hugging Face class name in `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// RoPE frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain `theta^(−2i/d)`.
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama 3.1's piecewise scaling (`rope_type = "llama3"`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The most elements one weight or the whole model may have: what an f64 copy of the model
/// ([`crate::Model::cast`], used by the gradient checks) can hold in an address space of `isize::MAX`
/// bytes. Sizes read from a file that multiply past it are refused before anything is allocated.
pub(crate) const MAX_ELEMENTS: usize = isize::MAX as usize / std::mem::size_of::<f64>();

/// How the file a configuration came from spells each field, so that an error names what a person
/// has to edit: `config.json` keys, or GGUF metadata keys under the architecture's prefix.
struct Fields {
    vocab_size: String,
    hidden_size: String,
    intermediate_size: String,
    n_layers: String,
    n_heads: String,
    n_kv_heads: String,
    head_dim: String,
    rms_norm_eps: String,
    rope_theta: String,
    rope_scaling: String,
    sliding_window: String,
}

impl Fields {
    fn hf() -> Self {
        Self {
            vocab_size: "vocab_size".into(),
            hidden_size: "hidden_size".into(),
            intermediate_size: "intermediate_size".into(),
            n_layers: "num_hidden_layers".into(),
            n_heads: "num_attention_heads".into(),
            n_kv_heads: "num_key_value_heads".into(),
            head_dim: "head_dim".into(),
            rms_norm_eps: "rms_norm_eps".into(),
            rope_theta: "rope_theta".into(),
            rope_scaling: "rope_scaling".into(),
            sliding_window: "sliding_window".into(),
        }
    }

    fn gguf(arch: &str) -> Self {
        let key = |k: &str| format!("{arch}.{k}");
        Self {
            vocab_size: key("vocab_size"),
            hidden_size: key("embedding_length"),
            intermediate_size: key("feed_forward_length"),
            n_layers: key("block_count"),
            n_heads: key("attention.head_count"),
            n_kv_heads: key("attention.head_count_kv"),
            head_dim: key("attention.key_length"),
            rms_norm_eps: key("attention.layer_norm_rms_epsilon"),
            rope_theta: key("rope.freq_base"),
            rope_scaling: key("rope.scaling"),
            sliding_window: "sliding_window".into(),
        }
    }
}

/// A Llama-family decoder's hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The context the model was trained for (`max_position_embeddings`, GGUF `context_length`), when the
    /// checkpoint says; the jobs refuse longer calibration sequences and evaluation windows unless told
    /// otherwise. Positions past it still compute (RoPE has no table), just not as the model was trained.
    pub max_position_embeddings: Option<usize>,
    /// The LM head is the token embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2; Llama's `attention_bias`).
    pub attention_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Mistral's sliding attention window, if any; longer sequences are refused rather than run wrongly.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
}

impl ModelConfig {
    /// The `head_dim / 2` inverse frequencies, computed in f32 as Hugging Face does
    /// (`1 / theta^(2i/d)`), then scaled.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f32> = (0..d / 2)
            .map(|i| 1.0f32 / (self.rope_theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => base
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f as f64;
                    let low_wavelen = old / low_freq_factor;
                    let high_wavelen = old / high_freq_factor;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        (f as f64 / factor) as f32
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * f as f64 / factor + smooth * f as f64) as f32
                    }
                })
                .collect(),
        }
    }

    /// Checks the internal consistency of the sizes, naming the `config.json` field at fault.
    ///
    /// **Errors** ([`ModelError::Config`]): a zero size; heads that do not group into the key/value
    /// heads; an odd `head_dim`; a non-positive or non-finite `rms_norm_eps`, `rope_theta` or RoPE
    /// scaling parameter; a zero `sliding_window`; sizes whose products (a tensor's element count, the
    /// model's parameter count) overflow or exceed what memory can address, so that no code that
    /// multiplies them later can wrap.
    pub fn validate(&self, path: &Path) -> Result<()> {
        self.check(path, &Fields::hf())
    }

    /// [`ModelConfig::validate`] with the fields spelled as in the file the configuration came from.
    fn check(&self, path: &Path, names: &Fields) -> Result<()> {
        let bad = |why: String| {
            Err(ModelError::Config {
                path: path.to_path_buf(),
                why,
            })
        };
        for (value, name) in [
            (self.vocab_size, &names.vocab_size),
            (self.hidden_size, &names.hidden_size),
            (self.intermediate_size, &names.intermediate_size),
            (self.n_layers, &names.n_layers),
            (self.n_heads, &names.n_heads),
            (self.n_kv_heads, &names.n_kv_heads),
            (self.head_dim, &names.head_dim),
        ] {
            if value == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} {} is not a multiple of {} {}",
                names.n_heads, self.n_heads, names.n_kv_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("{} {} is odd", names.head_dim, self.head_dim));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        for (value, name) in [
            (self.rms_norm_eps, names.rms_norm_eps.as_str()),
            (self.rope_theta, names.rope_theta.as_str()),
        ] {
            if !positive(value) {
                return bad(format!("{name} {value} is not a positive number"));
            }
        }
        let scaling: &[(f64, &str)] = match &self.rope_scaling {
            RopeScaling::None => &[],
            RopeScaling::Linear { factor } => &[(*factor, "factor")],
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => &[
                (*factor, "factor"),
                (*low_freq_factor, "low_freq_factor"),
                (*high_freq_factor, "high_freq_factor"),
                (
                    *original_max_position_embeddings,
                    "original_max_position_embeddings",
                ),
            ],
        };
        if let Some((value, key)) = scaling.iter().find(|(v, _)| !positive(*v)) {
            return bad(format!(
                "{} {key} {value} is not a positive number",
                names.rope_scaling
            ));
        }
        if self.sliding_window == Some(0) {
            return bad(format!("{} is 0", names.sliding_window));
        }
        self.check_sizes(names).or_else(bad)
    }

    /// Checks that every weight's element count and the model's parameter count are products that fit
    /// (in checked arithmetic) and stay below [`MAX_ELEMENTS`]; the error names the fields multiplied.
    fn check_sizes(&self, names: &Fields) -> std::result::Result<(), String> {
        let product = |a: (usize, &str), b: (usize, &str)| {
            a.0.checked_mul(b.0)
                .filter(|&p| p <= MAX_ELEMENTS)
                .ok_or_else(|| {
                    format!(
                        "{} {} × {} {} is more elements than memory can hold (at most {MAX_ELEMENTS})",
                        a.1, a.0, b.1, b.0
                    )
                })
        };
        let hidden = (self.hidden_size, names.hidden_size.as_str());
        let head_dim = (self.head_dim, names.head_dim.as_str());
        let q_dim = product((self.n_heads, &names.n_heads), head_dim)?;
        let kv_dim = product((self.n_kv_heads, &names.n_kv_heads), head_dim)?;
        let embed = product((self.vocab_size, &names.vocab_size), hidden)?;
        let q = product((q_dim, "the query width"), hidden)?;
        let kv = product((kv_dim, "the key/value width"), hidden)?;
        let mlp = product((self.intermediate_size, &names.intermediate_size), hidden)?;
        // Per block: two norms, q/k/v/o, gate/up/down, biases and q/k norms (counted whether present
        // or not: an upper bound is all this needs).
        let per_block = [
            self.hidden_size,
            self.hidden_size,
            q,
            kv,
            kv,
            q,
            mlp,
            mlp,
            mlp,
            q_dim,
            kv_dim,
            kv_dim,
            self.head_dim,
            self.head_dim,
        ]
        .iter()
        .try_fold(0usize, |acc, &x| acc.checked_add(x));
        let total = per_block
            .and_then(|b| b.checked_mul(self.n_layers))
            .and_then(|t| t.checked_add(embed))
            .and_then(|t| t.checked_add(embed))
            .and_then(|t| t.checked_add(self.hidden_size))
            .filter(|&t| t <= MAX_ELEMENTS);
        match total {
            Some(_) => Ok(()),
            None => Err(format!(
                "{} {} blocks of this size are more parameters than memory can hold (at most \
                 {MAX_ELEMENTS})",
                names.n_layers, self.n_layers
            )),
        }
    }

    /// Reads a Hugging Face `config.json`.
    ///
    /// **Errors**: I/O, invalid JSON, a missing required field, an unsupported `model_type`, activation,
    /// RoPE type or MLP bias.
    pub fn from_hf_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::formats::read_text(path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))?;
        Self::from_hf_json(&value, path)
    }

    /// Parses an already-read `config.json` value; `path` is used in errors only.
    pub fn from_hf_json(v: &Value, path: &Path) -> Result<Self> {
        let cfg_err = |why: String| ModelError::Config {
            path: path.to_path_buf(),
            why,
        };
        let unsupported = |arch: &str, why: String| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            why,
        };
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let family = match model_type {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            other => {
                return Err(unsupported(
                    other,
                    "model_type must be one of llama, mistral, qwen2, qwen3".into(),
                ));
            }
        };
        // An optional size: absent (or null), or a non-negative integer that fits usize.
        let opt_usize = |key: &str| -> Result<Option<usize>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        cfg_err(format!("field {key} = {x} is not a non-negative integer"))
                    }),
            }
        };
        let usize_field = |key: &str| -> Result<usize> {
            opt_usize(key)?.ok_or_else(|| cfg_err(format!("missing or non-integer field {key}")))
        };
        let f64_field = |obj: &Value, key: &str| obj.get(key).and_then(Value::as_f64);
        let hidden_size = usize_field("hidden_size")?;
        let n_heads = usize_field("num_attention_heads")?;
        let n_kv_heads = opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = match opt_usize("head_dim")? {
            Some(d) => d,
            None => derived_head_dim(hidden_size, n_heads, &Fields::hf()).map_err(cfg_err)?,
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(unsupported(
                model_type,
                format!("hidden_act {act} (only silu)"),
            ));
        }
        if v.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported(model_type, "mlp_bias = true".into()));
        }
        // RoPE: `rope_parameters` (new) wins over `rope_theta` + `rope_scaling` (old).
        let params = v.get("rope_parameters").filter(|p| p.is_object());
        let scaling_obj = params.or_else(|| v.get("rope_scaling").filter(|p| p.is_object()));
        let rope_theta = params
            .and_then(|p| f64_field(p, "rope_theta"))
            .or_else(|| f64_field(v, "rope_theta"))
            .unwrap_or(10000.0);
        let rope_scaling = match scaling_obj {
            None => RopeScaling::None,
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let need = |key: &str| {
                    f64_field(s, key)
                        .ok_or_else(|| cfg_err(format!("rope scaling {ty}: missing {key}")))
                };
                match ty {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: need("factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: need("factor")?,
                        low_freq_factor: need("low_freq_factor")?,
                        high_freq_factor: need("high_freq_factor")?,
                        original_max_position_embeddings: need("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(unsupported(model_type, format!("rope type {other}")));
                    }
                }
            }
        };
        let attention_bias = match family {
            Family::Qwen2 => true,
            _ => v
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let sliding_window = match family {
            Family::Mistral => opt_usize("sliding_window")?,
            Family::Qwen2 | Family::Qwen3 => {
                if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
                    opt_usize("sliding_window")?
                } else {
                    None
                }
            }
            Family::Llama => None,
        };
        let token_id = |key: &str| match v.get(key) {
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64),
            Some(x) => x.as_u64(),
            None => None,
        };
        let config = Self {
            family,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            n_layers: usize_field("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: f64_field(v, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize("max_position_embeddings")?,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias,
            qk_norm: family == Family::Qwen3,
            sliding_window,
            bos_token_id: token_id("bos_token_id"),
            eos_token_id: token_id("eos_token_id"),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// A `config.json` value that Hugging Face transformers (old and new) loads as this model, in f32.
    pub fn to_hf_json(&self) -> Value {
        self.to_hf_json_as("float32")
    }

    /// [`ModelConfig::to_hf_json`] for weights stored as `dtype` (`"bfloat16"`, `"float16"`): written to
    /// both `torch_dtype` (older transformers) and `dtype` (newer), so the two always agree.
    pub fn to_hf_json_as(&self, dtype: &str) -> Value {
        let mut rope = json!({ "rope_type": "default", "rope_theta": self.rope_theta });
        let old_scaling = match self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => {
                rope["rope_type"] = json!("linear");
                rope["factor"] = json!(factor);
                json!({ "rope_type": "linear", "type": "linear", "factor": factor })
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let s = json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings as u64,
                });
                for key in [
                    "factor",
                    "low_freq_factor",
                    "high_freq_factor",
                    "original_max_position_embeddings",
                ] {
                    rope[key] = s[key].clone();
                }
                rope["rope_type"] = json!("llama3");
                s
            }
        };
        let mut v = json!({
            "architectures": [self.family.hf_class()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": old_scaling,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "torch_dtype": dtype,
            "dtype": dtype,
        });
        if let Some(n) = self.max_position_embeddings {
            v["max_position_embeddings"] = json!(n);
        }
        if let Some(w) = self.sliding_window {
            v["sliding_window"] = json!(w);
            if matches!(self.family, Family::Qwen2 | Family::Qwen3) {
                v["use_sliding_window"] = json!(true);
            }
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        if let Some(e) = self.eos_token_id {
            v["eos_token_id"] = json!(e);
        }
        v
    }

    /// Builds the configuration from GGUF metadata (`general.architecture` = llama, qwen2 or qwen3).
    ///
    /// `tied` says whether the file lacks `output.weight` (the head is the embedding).
    ///
    /// **Errors**: another architecture, missing keys, llama.cpp's `rope_freqs` tensor (baked-in
    /// Llama-3 scaling, not yet mapped back to a `config.json`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let arch = gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::Config {
                path: path.to_path_buf(),
                why: "missing general.architecture".into(),
            })?
            .to_string();
        let family = match arch.as_str() {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    arch: other.to_string(),
                    why: "GGUF architecture must be llama, qwen2 or qwen3".into(),
                });
            }
        };
        if gguf.info("rope_freqs.weight").is_some() {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch,
                why: "rope_freqs.weight (baked-in RoPE scaling) is not supported".into(),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let cfg_err = |why: String| ModelError::Config {
            path: path.to_path_buf(),
            why,
        };
        // An optional size under `key(k)`: absent, or a non-negative integer that fits usize.
        let opt_u = |k: &str| -> Result<Option<usize>> {
            match gguf.get(&key(k)) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        cfg_err(format!(
                            "metadata {} = {v:?} is not a non-negative integer",
                            key(k)
                        ))
                    }),
            }
        };
        let need_u = |k: &str| -> Result<usize> {
            opt_u(k)?.ok_or_else(|| cfg_err(format!("missing or non-integer metadata {}", key(k))))
        };
        let opt_f = |k: &str| gguf.get(&key(k)).and_then(|v| v.as_f64());
        let names = Fields::gguf(&arch);
        let hidden_size = need_u("embedding_length")?;
        let n_heads = need_u("attention.head_count")?;
        let n_kv_heads = opt_u("attention.head_count_kv")?.unwrap_or(n_heads);
        let head_dim = match opt_u("attention.key_length")? {
            Some(d) => d,
            None => match opt_u("rope.dimension_count")? {
                Some(d) => d,
                None => derived_head_dim(hidden_size, n_heads, &names).map_err(cfg_err)?,
            },
        };
        let vocab_size = match opt_u("vocab_size")? {
            Some(v) => v,
            None => match gguf.get("tokenizer.ggml.tokens") {
                Some(crate::formats::gguf::GgufValue::Array(a)) => a.len(),
                // The file's dimensions were checked to fit usize when it was opened.
                _ => gguf
                    .info("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
                    .map_or(0, |v| v as usize),
            },
        };
        let rope_scaling = match gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: opt_f("rope.scaling.factor").unwrap_or(1.0),
            },
            Some(other) => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    arch,
                    why: format!("rope scaling type {other}"),
                });
            }
        };
        let token = |k: &str| gguf.get(k).and_then(|v| v.as_u64());
        let config = Self {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: need_u("feed_forward_length")?,
            n_layers: need_u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: opt_f("rope.freq_base").unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: opt_u("context_length")?,
            tie_word_embeddings: gguf.info("output.weight").is_none(),
            attention_bias: gguf.info("blk.0.attn_q.bias").is_some(),
            qk_norm: gguf.info("blk.0.attn_q_norm.weight").is_some(),
            sliding_window: None,
            bos_token_id: token("tokenizer.ggml.bos_token_id"),
            eos_token_id: token("tokenizer.ggml.eos_token_id"),
        };
        config.check(path, &names)?;
        Ok(config)
    }
}

/// `hidden_size / num_attention_heads`, the head width of a file that does not give one; the heads must
/// divide the hidden size exactly (a remainder would silently drop columns of every projection).
fn derived_head_dim(
    hidden_size: usize,
    n_heads: usize,
    names: &Fields,
) -> std::result::Result<usize, String> {
    if n_heads == 0 {
        return Err(format!("{} is 0", names.n_heads));
    }
    if !hidden_size.is_multiple_of(n_heads) {
        return Err(format!(
            "{} {n_heads} does not divide {} {hidden_size} (and no {} is given)",
            names.n_heads, names.hidden_size, names.head_dim
        ));
    }
    Ok(hidden_size / n_heads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "rms_norm_eps": 1e-5,
        })
    }

    #[test]
    fn old_and_new_rope_fields_agree() {
        let p = Path::new("config.json");
        let mut old = base();
        old["rope_theta"] = json!(500000.0);
        old["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut new = base();
        new["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let a = ModelConfig::from_hf_json(&old, p).unwrap();
        let b = ModelConfig::from_hf_json(&new, p).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.head_dim, 16);
        assert!(matches!(a.rope_scaling, RopeScaling::Llama3 { .. }));
        // Writing and reading back keeps everything.
        assert_eq!(ModelConfig::from_hf_json(&a.to_hf_json(), p).unwrap(), a);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut v = base();
        v["head_dim"] = json!(128);
        v["rope_theta"] = json!(500000.0);
        v["rope_scaling"] = json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_hf_json(&v, Path::new("c.json")).unwrap();
        let plain = ModelConfig {
            rope_scaling: RopeScaling::None,
            ..c.clone()
        }
        .inv_freq();
        let scaled = c.inv_freq();
        assert_eq!(scaled[0], plain[0]);
        assert_eq!(scaled[63], plain[63] / 8.0);
        // Somewhere in between the smooth interpolation lies strictly between the two.
        let mid = (0..64).find(|&i| scaled[i] != plain[i] && scaled[i] != plain[i] / 8.0);
        assert!(mid.is_some());
    }

    #[test]
    fn families_and_errors() {
        let p = Path::new("x/config.json");
        let mut q2 = base();
        q2["model_type"] = json!("qwen2");
        assert!(ModelConfig::from_hf_json(&q2, p).unwrap().attention_bias);
        let mut q3 = base();
        q3["model_type"] = json!("qwen3");
        q3["head_dim"] = json!(32);
        let c3 = ModelConfig::from_hf_json(&q3, p).unwrap();
        assert!(c3.qk_norm && c3.head_dim == 32 && !c3.attention_bias);
        let mut gpt = base();
        gpt["model_type"] = json!("gpt2");
        let e = ModelConfig::from_hf_json(&gpt, p).unwrap_err().to_string();
        assert!(e.contains("x/config.json") && e.contains("gpt2"), "{e}");
        let mut bad = base();
        bad["num_key_value_heads"] = json!(3);
        assert!(ModelConfig::from_hf_json(&bad, p).is_err());
        let mut missing = base();
        missing.as_object_mut().map(|o| o.remove("hidden_size"));
        let e = ModelConfig::from_hf_json(&missing, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }

    /// What is accepted and what is refused, naming the field: Llama, Mistral with or without a
    /// sliding window (the jobs refuse sequences longer than it), Qwen2's biases, Qwen3's q/k norms; other
    /// activations, MLP biases and RoPE types are refused.
    #[test]
    fn accepted_and_refused_configurations() {
        let p = Path::new("m/config.json");
        let mut mistral = base();
        mistral["model_type"] = json!("mistral");
        mistral["sliding_window"] = Value::Null;
        let c = ModelConfig::from_hf_json(&mistral, p).unwrap();
        assert_eq!((c.family, c.sliding_window), (Family::Mistral, None));
        mistral["sliding_window"] = json!(4096);
        let c = ModelConfig::from_hf_json(&mistral, p).unwrap();
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(ModelConfig::from_hf_json(&c.to_hf_json(), p).unwrap(), c);
        // Qwen's window counts only when it is switched on.
        let mut qwen = base();
        qwen["model_type"] = json!("qwen2");
        qwen["sliding_window"] = json!(64);
        assert_eq!(
            ModelConfig::from_hf_json(&qwen, p).unwrap().sliding_window,
            None
        );
        qwen["use_sliding_window"] = json!(true);
        assert_eq!(
            ModelConfig::from_hf_json(&qwen, p).unwrap().sliding_window,
            Some(64)
        );
        for (key, value, named) in [
            ("hidden_act", json!("gelu"), "hidden_act gelu"),
            ("mlp_bias", json!(true), "mlp_bias"),
            (
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 4.0}),
                "rope type yarn",
            ),
            ("sliding_window", json!(0), "sliding_window is 0"),
        ] {
            let mut v = mistral.clone();
            v[key] = value;
            let e = ModelConfig::from_hf_json(&v, p).unwrap_err().to_string();
            assert!(
                e.contains("m/config.json") && e.contains(named),
                "{key}: {e}"
            );
        }
    }

    /// `torch_dtype` (older transformers) and `dtype` (newer) always name the same type.
    #[test]
    fn written_dtypes_agree() {
        let c = ModelConfig::from_hf_json(&base(), Path::new("config.json")).unwrap();
        for dtype in ["float32", "bfloat16", "float16"] {
            let v = c.to_hf_json_as(dtype);
            assert_eq!(
                (&v["torch_dtype"], &v["dtype"]),
                (&json!(dtype), &json!(dtype))
            );
        }
        assert_eq!(c.to_hf_json()["dtype"], "float32");
    }
}
