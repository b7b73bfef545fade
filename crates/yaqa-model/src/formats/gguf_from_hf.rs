//! What a GGUF file needs that a Hugging Face folder keeps elsewhere, for `export --format gguf` from an
//! HF original: llama.cpp's `llama.*` keys from `config.json`, its `tokenizer.ggml.*` vocabulary from
//! `tokenizer.json` (and `tokenizer_config.json` when the folder has one), and the tensors that are not
//! quantized, in a type that holds their values exactly. The keys and values are those llama.cpp's own
//! converter (`convert_hf_to_gguf.py`) writes for a Llama model with a byte-level BPE tokenizer; on the
//! SmolLM2 fixture the vocabulary, token types, merges, special ids and pre-tokenizer equal the fixture
//! GGUF's (`tests/gguf_export.rs`).

use std::path::Path;

use half::f16;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::formats::gguf::GgufValue;
use crate::formats::gguf_writer::TensorOut;
use crate::transformer::config::{Family, ModelConfig, RopeScaling};

/// llama.cpp's token types (`llama_token_type`): a plain token, a special one, an added one that is not
/// special, and padding up to the model's vocabulary size.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The `llama.*` and `general.*` keys of a Llama-architecture GGUF for `config`.
///
/// **Errors**: a family llama.cpp's `llama` architecture does not run as it is (Qwen2's biases, Qwen3's
/// q/k norms, Mistral's sliding window), RoPE scaling (llama.cpp needs its own `rope_freqs` tensor or
/// keys for it, which are not written), a missing `max_position_embeddings`.
pub fn llama_metadata(config: &ModelConfig, name: &str) -> Result<Vec<(String, GgufValue)>> {
    let refuse =
        |why: String| ModelError::Input(format!("--format gguf from a Hugging Face folder: {why}"));
    match config.family {
        Family::Llama => {}
        Family::Mistral if config.sliding_window.is_none() => {}
        other => {
            return Err(refuse(format!(
                "model_type {} is not written as llama.cpp's llama architecture (biases, q/k norms or \
                 a sliding window it would drop); Llama and Mistral without a sliding window are",
                other.model_type()
            )));
        }
    }
    if config.rope_scaling != RopeScaling::None {
        return Err(refuse(format!(
            "rope_scaling {:?} is not written (llama.cpp needs rope_freqs or rope.scaling keys for it)",
            config.rope_scaling
        )));
    }
    let context = config.max_position_embeddings.ok_or_else(|| {
        refuse("config.json has no max_position_embeddings (llama.context_length)".into())
    })?;
    let u = |v: usize| -> Result<GgufValue> {
        u32::try_from(v)
            .map(GgufValue::U32)
            .map_err(|_| refuse(format!("{v} does not fit GGUF's u32 fields")))
    };
    let mut keys = vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("general.name", GgufValue::String(name.into())),
        ("llama.context_length", u(context)?),
        ("llama.embedding_length", u(config.hidden_size)?),
        ("llama.block_count", u(config.n_layers)?),
        ("llama.feed_forward_length", u(config.intermediate_size)?),
        ("llama.attention.head_count", u(config.n_heads)?),
        ("llama.attention.head_count_kv", u(config.n_kv_heads)?),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(config.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base",
            GgufValue::F32(config.rope_theta as f32),
        ),
        ("llama.rope.dimension_count", u(config.head_dim)?),
        ("llama.vocab_size", u(config.vocab_size)?),
    ];
    if config.n_heads * config.head_dim != config.hidden_size {
        keys.push(("llama.attention.key_length", u(config.head_dim)?));
        keys.push(("llama.attention.value_length", u(config.head_dim)?));
    }
    Ok(keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// llama.cpp's pre-tokenizer name for `tokenizer.json`'s `pre_tokenizer`, for the byte-level BPE
/// layouts whose splitting llama.cpp reproduces: GPT-2's regex alone (`gpt-2`), or single digits first
/// (`smollm`: the StarCoder/SmolLM regexes).
fn pre_name(pre: &Value) -> Option<&'static str> {
    let byte_level = |v: &Value| v["type"] == "ByteLevel" && v["use_regex"] != false;
    if byte_level(pre) {
        return Some("gpt-2");
    }
    match pre["pretokenizers"].as_array()?.as_slice() {
        [digits, bl]
            if digits["type"] == "Digits"
                && digits["individual_digits"] == true
                && byte_level(bl) =>
        {
            Some("smollm")
        }
        _ => None,
    }
}

/// The `tokenizer.ggml.*` keys (and `tokenizer.chat_template`) for `tokenizer.json` at `path` and the
/// model's `config`: the vocabulary padded to `vocab_size` (and its holes filled) with `[PAD<id>]` tokens, added tokens typed
/// control (special) or user-defined, the merges as `"a b"`, BOS/EOS from `config.json`, and from
/// `tokenizer_config.json` beside it (when there is one) `add_bos_token`, the unknown and padding tokens
/// and the chat template.
///
/// **Errors** (naming the file): unreadable JSON, a tokenizer that is not byte-level BPE or whose
/// pre-tokenizer llama.cpp has no name for, ids beyond `vocab_size`, merges that are not pairs. Ids no
/// token has are padding, as llama.cpp's converter makes them.
pub fn tokenizer_metadata(path: &Path, config: &ModelConfig) -> Result<Vec<(String, GgufValue)>> {
    let read = |p: &Path| -> Result<Value> {
        let text = std::fs::read_to_string(p).map_err(|e| ModelError::io(p, e))?;
        serde_json::from_str(&text).map_err(|e| ModelError::format(p, format!("not JSON: {e}")))
    };
    let bad = |why: String| ModelError::format(path, why);
    let tok = read(path)?;
    let model = &tok["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "model.type {}: the GGUF export writes byte-level BPE tokenizers (tokenizer.ggml.model gpt2)",
            model["type"]
        )));
    }
    let pre = pre_name(&tok["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "pre_tokenizer {} has no llama.cpp pre-tokenizer name this export knows (gpt-2, smollm); \
             export from the model's GGUF file instead",
            tok["pre_tokenizer"]
        ))
    })?;
    let n = config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![NORMAL; n];
    let mut put = |id: Option<u64>, text: &str, ty: i32| -> Result<()> {
        let id = id
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < n)
            .ok_or_else(|| {
                bad(format!(
                    "token {text:?} has id {id:?}, beyond vocab_size {n}"
                ))
            })?;
        tokens[id] = Some(text.to_string());
        types[id] = ty;
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object".into()))?;
    for (text, id) in vocab {
        put(id.as_u64(), text, NORMAL)?;
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        let text = added["content"]
            .as_str()
            .ok_or_else(|| bad("an added token without content".into()))?;
        let ty = if added["special"] == true {
            CONTROL
        } else {
            USER_DEFINED
        };
        put(added["id"].as_u64(), text, ty)?;
    }
    let tokens: Vec<GgufValue> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            GgufValue::String(t.unwrap_or_else(|| {
                types[i] = UNUSED;
                format!("[PAD{i}]")
            }))
        })
        .collect();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is not a list".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(GgufValue::String(s.clone())),
            Value::Array(p) => match p.as_slice() {
                [Value::String(a), Value::String(b)] => Ok(GgufValue::String(format!("{a} {b}"))),
                _ => Err(bad(format!("merge {m} is not a pair of strings"))),
            },
            _ => Err(bad(format!("merge {m} is not a string or a pair"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let id_of = |text: &str| {
        vocab.get(text).and_then(Value::as_u64).or_else(|| {
            tok["added_tokens"]
                .as_array()?
                .iter()
                .find(|a| a["content"] == text)
                .and_then(|a| a["id"].as_u64())
        })
    };
    let mut keys = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), GgufValue::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            GgufValue::Bool(false),
        ),
    ];
    let special = |key: &str, id: Option<u64>| {
        id.and_then(|i| u32::try_from(i).ok())
            .map(|i| (key.to_string(), GgufValue::U32(i)))
    };
    keys.extend(special("tokenizer.ggml.bos_token_id", config.bos_token_id));
    keys.extend(special("tokenizer.ggml.eos_token_id", config.eos_token_id));
    let tc_path = path.with_file_name("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        read(&tc_path)?
    } else {
        Value::Null
    };
    // A token in tokenizer_config.json is a string or {"content": …}.
    let text_of = |v: &Value| {
        v.as_str()
            .or_else(|| v["content"].as_str())
            .map(str::to_string)
    };
    let unk = text_of(&tc["unk_token"]).or_else(|| model["unk_token"].as_str().map(str::to_string));
    keys.extend(special(
        "tokenizer.ggml.unknown_token_id",
        unk.as_deref().and_then(id_of),
    ));
    keys.extend(special(
        "tokenizer.ggml.padding_token_id",
        text_of(&tc["pad_token"]).as_deref().and_then(id_of),
    ));
    keys.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(tc["add_bos_token"] == true),
    ));
    if let Some(t) = tc["chat_template"].as_str() {
        keys.push((
            "tokenizer.chat_template".into(),
            GgufValue::String(t.into()),
        ));
    }
    Ok(keys)
}

/// A tensor that is not quantized, as GGUF stores it: dimensions fastest first; a matrix in F16 when
/// every value is a float16 value (an f16 checkpoint's are), else F32, so the values are the original's
/// exactly; vectors (norms) in F32, as llama.cpp's kernels take them.
pub fn dense_tensor(name: String, shape: &[usize], data: &[f32]) -> TensorOut {
    let dims = shape.iter().rev().map(|&d| d as u64).collect();
    let exact_f16 = shape.len() > 1
        && data.iter().all(|&v| {
            let h = f16::from_f32(v);
            h.is_finite() && h.to_f32().to_bits() == v.to_bits()
        });
    let (type_id, bytes) = if exact_f16 {
        (
            1,
            data.iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
        )
    } else {
        (0, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    };
    TensorOut {
        name,
        dims,
        type_id,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::weights::tiny_config;

    #[test]
    fn only_what_llamas_architecture_runs_is_written() {
        let llama = tiny_config(Family::Llama, false);
        let keys = llama_metadata(&llama, "m").unwrap();
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("general.architecture"),
            Some(GgufValue::String("llama".into()))
        );
        assert_eq!(
            get("llama.block_count"),
            Some(GgufValue::U32(llama.n_layers as u32))
        );
        for (config, want) in [
            (tiny_config(Family::Qwen2, false), "model_type qwen2"),
            (tiny_config(Family::Qwen3, false), "model_type qwen3"),
            (
                ModelConfig {
                    rope_scaling: RopeScaling::Linear { factor: 2.0 },
                    ..llama.clone()
                },
                "rope_scaling",
            ),
            (
                ModelConfig {
                    max_position_embeddings: None,
                    ..llama.clone()
                },
                "max_position_embeddings",
            ),
        ] {
            let e = llama_metadata(&config, "m").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn pre_tokenizers_map_to_llama_cpps_names() {
        let bl = serde_json::json!({"type": "ByteLevel", "use_regex": true});
        assert_eq!(pre_name(&bl), Some("gpt-2"));
        let digits = serde_json::json!({"type": "Digits", "individual_digits": true});
        let seq = serde_json::json!({"type": "Sequence", "pretokenizers": [digits, bl]});
        assert_eq!(pre_name(&seq), Some("smollm"));
        let grouped = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": false}, bl]});
        assert_eq!(pre_name(&grouped), None);
        assert_eq!(pre_name(&serde_json::json!({"type": "Metaspace"})), None);
    }

    #[test]
    fn tokenizers_that_do_not_fit_the_model_are_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("yaqa-gguf-from-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        let config = tiny_config(Family::Llama, false); // vocab_size 37
        let bl = serde_json::json!({"type": "ByteLevel", "use_regex": true});
        let tok =
            |vocab: serde_json::Value, merges: serde_json::Value, added: serde_json::Value| {
                serde_json::json!({"model": {"type": "BPE", "vocab": vocab, "merges": merges},
                               "added_tokens": added, "pre_tokenizer": bl})
                .to_string()
            };
        let cases = [
            (
                tok(
                    serde_json::json!({"a": 0, "b": 40}),
                    serde_json::json!([]),
                    serde_json::json!([]),
                ),
                "beyond vocab_size 37",
            ),
            (
                tok(
                    serde_json::json!({"a": 0}),
                    serde_json::json!([["a"]]),
                    serde_json::json!([]),
                ),
                "not a pair",
            ),
            (
                tok(
                    serde_json::json!({"a": 0}),
                    serde_json::json!([7]),
                    serde_json::json!([]),
                ),
                "not a string or a pair",
            ),
            (
                tok(
                    serde_json::json!({"a": 0}),
                    serde_json::json!([]),
                    serde_json::json!([{"id": 1}]),
                ),
                "without content",
            ),
            ("{\"model\": ".to_string(), "not JSON"),
        ];
        for (text, want) in cases {
            std::fs::write(&path, text).unwrap();
            let e = tokenizer_metadata(&path, &config).unwrap_err().to_string();
            assert!(
                e.contains("tokenizer.json") && e.contains(want),
                "{want}: {e}"
            );
        }
        // A good one: padded to the model's vocabulary, added tokens typed.
        std::fs::write(
            &path,
            tok(
                serde_json::json!({"a": 0, "b": 1}),
                serde_json::json!(["a b"]),
                serde_json::json!([{"id": 2, "content": "<s>", "special": true}, {"id": 3, "content": "x", "special": false}, {"id": 5, "content": "y", "special": false}]),
            ),
        )
        .unwrap();
        let keys = tokenizer_metadata(&path, &config).unwrap();
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let GgufValue::Array(types) = get("tokenizer.ggml.token_type") else {
            panic!()
        };
        assert_eq!(types.len(), 37);
        assert_eq!(
            &types[..5],
            &[
                GgufValue::I32(1),
                GgufValue::I32(1),
                GgufValue::I32(3),
                GgufValue::I32(4),
                GgufValue::I32(5)
            ]
        );
        let GgufValue::Array(tokens) = get("tokenizer.ggml.tokens") else {
            panic!()
        };
        assert_eq!(tokens[36], GgufValue::String("[PAD36]".into()));
        assert_eq!(
            tokens[4],
            GgufValue::String("[PAD4]".into()),
            "a hole is padding"
        );
        assert_eq!(types[5], GgufValue::I32(4));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dense_tensors_keep_their_values() {
        let t = dense_tensor("a".into(), &[2, 2], &[0.5, -1.0, 3.0, 0.25]);
        assert_eq!(
            (t.type_id, t.dims.clone(), t.bytes.len()),
            (1, vec![2, 2], 8)
        );
        let t = dense_tensor("b".into(), &[2, 1], &[0.1, 1.0]);
        assert_eq!(
            (t.type_id, t.bytes.len()),
            (0, 8),
            "0.1 is no float16 value"
        );
        let t = dense_tensor("norm".into(), &[2], &[0.5, 1.0]);
        assert_eq!(t.type_id, 0, "vectors stay F32");
    }
}
