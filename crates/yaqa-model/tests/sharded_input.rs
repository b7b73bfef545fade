//! Hugging Face bf16 checkpoints in, single or sharded (issue #21): the SmolLM2 fixture, converted to a
//! Hugging Face folder (`convert`, as `yaqa convert` does), written once as one bf16 `model.safetensors`
//! and once as three bf16 shards with `model.safetensors.index.json`, loads to the same weights bit for
//! bit, and quantizing either (collection and RTN rounding of the first block) gives the same codes,
//! scales and per-layer report; only the model fingerprint, which hashes the files' headers, differs.

mod common;

use std::path::Path;

use safetensors::SafeTensors;
use serde_json::{Value, json};
use yaqa_backend_cpu::Cpu;
use yaqa_core::layer::{LayerParams, Method, QuantizerSpec};
use yaqa_core::sketch::SketchKind;
use yaqa_model::formats::checkpoint::{self, Loaded};
use yaqa_model::formats::hf::{Half, RawTensor, half_tensors, write_json, write_safetensors};
use yaqa_model::job::calib::{Shard, sample_sequences};
use yaqa_model::job::collect::{FactorSet, collect, empty_factors};
use yaqa_model::job::export::{ConvertConfig, convert};
use yaqa_model::job::pipeline::{quantize_model, run_header};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::LayerId;

/// Writes `tensors` as a bf16 Hugging Face folder: one file, or `shards` files and an index naming
/// each tensor's file (tensors in order, split into contiguous runs).
fn write_bf16(dir: &Path, loaded: &Loaded, tensors: &[(String, RawTensor)], shards: usize) {
    std::fs::create_dir_all(dir).unwrap();
    write_json(
        &dir.join("config.json"),
        &loaded.model.config.to_hf_json_as("bfloat16"),
    )
    .unwrap();
    if shards == 1 {
        write_safetensors(&dir.join("model.safetensors"), tensors, "format", "pt").unwrap();
        return;
    }
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        write_safetensors(&dir.join(&file), chunk, "format", "pt").unwrap();
        for (name, t) in chunk {
            weight_map.insert(name.clone(), json!(file));
            total += t.bytes.len();
        }
    }
    assert_eq!(tensors.chunks(per).count(), shards);
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )
    .unwrap();
}

/// RTN on the INT4 asymmetric grid, groups of 64, no rotation, over block 0 with factors from two
/// sampled 16-token sequences; returns the quantized file's bytes.
fn quantize_block0(loaded: &mut Loaded, out: &Path) -> Vec<u8> {
    loaded.model.selected = 0..1;
    let model = &loaded.model;
    let cpu = Cpu::default();
    let tf = Transformer::new(model, &cpu);
    let seqs = sample_sequences(&tf, 2, 16, 5, Shard::default(), 1, 2, &mut |_| {}).unwrap();
    let mut set: FactorSet = empty_factors(model, SketchKind::Xtx)
        .into_iter()
        .map(|(id, f)| (id, vec![f]))
        .collect();
    collect(&cpu, model, &seqs, 2, &mut set, &mut |_| {}).unwrap();
    let params = LayerParams {
        method: Method::Rtn,
        quantizer: QuantizerSpec::IntAsym {
            bits: 4,
            group_size: Some(64),
        },
        incoherence: false,
        ..LayerParams::default()
    };
    let header = run_header(&params, &loaded.fingerprint, json!({"sketch": "xtx"}));
    let ids = LayerId::all(model);
    assert_eq!(ids.len(), 7);
    let o = quantize_model(
        &cpu,
        model,
        &ids,
        &mut |id| Ok(set[&id][0].clone()),
        &params,
        None,
        &header,
        out,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert!(o.finished);
    std::fs::read(out).unwrap()
}

#[test]
fn sharded_and_single_bf16_folders_quantize_identically() {
    let Some(shared) = common::shared_dir() else {
        return;
    };
    let gguf = shared.join("fixtures/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = std::env::temp_dir().join(format!("yaqa-sharded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hf = dir.join("f32");
    convert(&ConvertConfig {
        model: gguf,
        out: hf.clone(),
    })
    .unwrap();
    let converted = checkpoint::load(&hf).unwrap();
    let tensors = half_tensors(&converted.model, Half::Bf16, |_| false).unwrap();
    let (single, sharded) = (dir.join("single"), dir.join("sharded"));
    write_bf16(&single, &converted, &tensors, 1);
    write_bf16(&sharded, &converted, &tensors, 3);
    drop((converted, tensors));

    let mut a = checkpoint::load(&single).unwrap();
    let mut b = checkpoint::load(&sharded).unwrap();
    assert_ne!(
        a.fingerprint, b.fingerprint,
        "headers differ, so do fingerprints"
    );
    let shards = yaqa_model::formats::hf::HfCheckpoint::open(&sharded)
        .unwrap()
        .shard_paths();
    assert_eq!(shards.len(), 3);
    let (ta, tb) = (a.model.hf_tensors().unwrap(), b.model.hf_tensors().unwrap());
    assert_eq!(ta.len(), tb.len());
    for ((na, sa, da), (nb, sb, db)) in ta.iter().zip(&tb) {
        assert_eq!((na, sa), (nb, sb));
        assert!(
            da.iter()
                .zip(db.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} differs between the single and the sharded folder"
        );
    }
    drop((ta, tb));

    let qa = quantize_block0(&mut a, &dir.join("single.safetensors"));
    let qb = quantize_block0(&mut b, &dir.join("sharded.safetensors"));
    let (sa, sb) = (
        SafeTensors::deserialize(&qa).unwrap(),
        SafeTensors::deserialize(&qb).unwrap(),
    );
    let mut names = sa.names();
    names.sort();
    let mut other = sb.names();
    other.sort();
    assert_eq!(names, other);
    assert_eq!(names.len(), 7 * 3, "codes, scales, zeros of 7 layers");
    for name in names {
        let (x, y) = (sa.tensor(name).unwrap(), sb.tensor(name).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{name}");
        assert!(x.data() == y.data(), "{name} differs");
    }
    let header = |bytes: &[u8]| -> Value {
        let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["yaqa"]).unwrap()
    };
    let (mut ha, mut hb) = (header(&qa), header(&qb));
    assert_ne!(ha["model_fingerprint"], hb["model_fingerprint"]);
    for h in [&mut ha, &mut hb] {
        h.as_object_mut().unwrap().remove("model_fingerprint");
    }
    assert_eq!(ha, hb, "the headers differ beyond the fingerprint");
    std::fs::remove_dir_all(&dir).unwrap();
}
