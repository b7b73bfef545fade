//! The quantization pipeline on a tiny synthetic model: files written by an interrupted and resumed run
//! are byte-identical to an uninterrupted run's, and the file's `dequantize` rebuilds every `Ŵ` of the
//! pipeline bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use yaqa_backend_cpu::Cpu;
use yaqa_core::layer::{LayerParams, Method, QuantizedLayer, QuantizerSpec, quantize_layer};
use yaqa_core::sketch::{Factors, SketchKind};
use yaqa_model::formats::quant_file::QuantFile;
use yaqa_model::job::calib::{Shard, sample_sequences};
use yaqa_model::job::collect::{FactorSet, collect, empty_factors};
use yaqa_model::job::pipeline::{parts_dir, quantize_model, run_header};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::LayerId;
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaqa-pipeline-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn factors(model: &Model<f32>) -> BTreeMap<LayerId, Factors> {
    let cpu = Cpu::default();
    let tf = Transformer::new(model, &cpu);
    let seqs = sample_sequences(&tf, 6, 12, 3, Shard::default(), 1, 3, &mut |_| {}).unwrap();
    let mut set: FactorSet = empty_factors(model, SketchKind::B)
        .into_iter()
        .map(|(id, f)| (id, vec![f]))
        .collect();
    collect(&Cpu::default(), model, &seqs, 3, &mut set, &mut |_| {}).unwrap();
    set.into_iter()
        .map(|(id, mut v)| (id, v.remove(0)))
        .collect()
}

fn run(
    model: &Model<f32>,
    f: &BTreeMap<LayerId, Factors>,
    params: &LayerParams,
    out: &Path,
    stop: Option<usize>,
) -> (
    yaqa_model::job::pipeline::Outcome,
    BTreeMap<LayerId, QuantizedLayer>,
) {
    let layers = LayerId::all(model);
    let header = run_header(params, "test-model", json!({"sketch": "b"}));
    // The pipeline keeps only reports; the layers are caught as they are finished.
    let mut done = BTreeMap::new();
    let o = quantize_model(
        &Cpu::default(),
        model,
        &layers,
        &mut |id| Ok(f[&id].clone()),
        params,
        None,
        &header,
        out,
        stop,
        &mut |l| {
            if let Some(q) = l.result {
                done.insert(l.id, q.clone());
            }
        },
    )
    .unwrap();
    (o, done)
}

#[test]
fn resumed_run_gives_identical_bytes_and_exact_dequantization() {
    let model = Model::synthetic(tiny_config(Family::Llama, true), 11);
    let f = factors(&model);
    for (tag, params) in [
        (
            "yaqa",
            LayerParams {
                method: Method::Yaqa,
                quantizer: QuantizerSpec::IntSym { bits: 3 },
                ..LayerParams::default()
            },
        ),
        (
            "gptq-asym",
            LayerParams {
                method: Method::Gptq,
                quantizer: QuantizerSpec::IntAsym {
                    bits: 4,
                    group_size: Some(8),
                },
                incoherence: false,
                ..LayerParams::default()
            },
        ),
    ] {
        let dir = scratch(tag);
        let whole = dir.join("whole.safetensors");
        let (o, quantized) = run(&model, &f, &params, &whole, None);
        assert!(o.finished && o.done.len() == 14 && o.resumed.is_empty());
        assert!(
            !parts_dir(&whole).exists(),
            "parts are removed after assembly"
        );

        let resumed = dir.join("resumed.safetensors");
        let (first, _) = run(&model, &f, &params, &resumed, Some(5));
        assert!(!first.finished && first.done.len() == 5);
        assert!(!resumed.exists(), "no final file after an interrupted run");
        let (second, _) = run(&model, &f, &params, &resumed, None);
        assert!(second.finished);
        assert_eq!(
            second.resumed.len(),
            5,
            "{tag}: finished layers are skipped"
        );
        assert_eq!(second.done.len(), 9);
        assert_eq!(
            std::fs::read(&whole).unwrap(),
            std::fs::read(&resumed).unwrap(),
            "{tag}: resumed output differs"
        );

        // Ŵ from the file equals the pipeline's, bit for bit.
        let file = QuantFile::open(&whole).unwrap();
        assert_eq!(file.layers().unwrap(), LayerId::all(&model));
        for (id, q) in &quantized {
            let w_hat = file.dequantize(&Cpu::default(), *id).unwrap();
            let again = quantize_layer(
                &Cpu::default(),
                &id.name(),
                model.layers[id.block].linear(id.kind),
                &f[id].for_method(params.method),
                &params,
            )
            .unwrap();
            assert_eq!(again.w_hat, q.w_hat, "{tag}: the pipeline is deterministic");
            let same = w_hat
                .data
                .iter()
                .zip(&q.w_hat.data)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{tag}: {} dequantizes differently", id.name());
            assert_ne!(q.w_hat, *model.layers[id.block].linear(id.kind));
        }

        // A resumed run with different arguments is refused, naming the parts folder.
        let other = dir.join("other.safetensors");
        run(&model, &f, &params, &other, Some(2));
        let changed = LayerParams { seed: 99, ..params };
        let header = run_header(&changed, "test-model", json!({"sketch": "b"}));
        let err = quantize_model(
            &Cpu::default(),
            &model,
            &LayerId::all(&model),
            &mut |id| Ok(f[&id].clone()),
            &changed,
            None,
            &header,
            &other,
            None,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("different arguments") && err.contains("other.safetensors.parts"),
            "{err}"
        );

        // A truncated file is reported with its name.
        let bytes = std::fs::read(&whole).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = QuantFile::open(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut.safetensors") && err.contains("truncated"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Bytes of the `L.codes` tensors of a quantized file, over all layers.
fn code_bytes(file: &QuantFile) -> usize {
    file.file
        .tensors
        .iter()
        .filter(|(name, _)| name.ends_with(".codes"))
        .map(|(_, info)| info.end - info.start)
        .sum()
}

#[test]
fn int2_codes_take_a_quarter_of_the_int8_bytes() {
    let model = Model::synthetic(tiny_config(Family::Llama, true), 11);
    let f = factors(&model);
    let dir = scratch("sizes");
    let mut sizes = Vec::new();
    for bits in [2, 8] {
        let params = LayerParams {
            method: Method::Rtn,
            quantizer: QuantizerSpec::IntSym { bits },
            ..LayerParams::default()
        };
        let out = dir.join(format!("int{bits}.safetensors"));
        let (_, quantized) = run(&model, &f, &params, &out, None);
        let file = QuantFile::open(&out).unwrap();
        // Packed codes still rebuild Ŵ bit for bit at both widths.
        for (id, q) in &quantized {
            let w_hat = file.dequantize(&Cpu::default(), *id).unwrap();
            assert!(
                w_hat
                    .data
                    .iter()
                    .zip(&q.w_hat.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "int{bits}: {} dequantizes differently",
                id.name()
            );
        }
        sizes.push((
            code_bytes(&file),
            std::fs::metadata(&out).unwrap().len() as usize,
        ));
    }
    let weights: usize = LayerId::all(&model)
        .iter()
        .map(|id| {
            let (m, n) = model.layers[id.block].linear(id.kind).shape();
            m * n
        })
        .sum();
    let ((int2_codes, int2_file), (int8_codes, int8_file)) = (sizes[0], sizes[1]);
    // Every input dimension of the tiny model is a multiple of 4, so 2-bit rows need no padding.
    assert_eq!(int8_codes, weights, "INT8: one byte per weight");
    assert_eq!(
        int2_codes * 4,
        int8_codes,
        "INT2: a quarter of a byte per weight"
    );
    assert!(int2_file < int8_file, "{int2_file} vs {int8_file} bytes");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The QTIP trellis through the pipeline on a tiny model whose every dimension is a multiple of 16
/// (hidden 32, MLP 48, key/value 16): YAQA at 2 and 3 bits with 16 × 16 tiles, a resumed run
/// byte-identical to a whole one, every `Ŵ` rebuilt bit for bit from the bit-packed codes (K bits per
/// weight: the code tensors hold exactly `K·weights/8` bytes), and a header naming a trellis width it
/// does not take refused with the file named.
#[test]
fn trellis_round_trips_through_the_pipeline() {
    let config = yaqa_model::ModelConfig {
        hidden_size: 32,
        intermediate_size: 48,
        head_dim: 8,
        ..tiny_config(Family::Llama, true)
    };
    let model = Model::synthetic(config, 11);
    let f = factors(&model);
    let weights: usize = LayerId::all(&model)
        .iter()
        .map(|id| {
            let (m, n) = model.layers[id.block].linear(id.kind).shape();
            m * n
        })
        .sum();
    for bits in [2u32, 3] {
        let dir = scratch(&format!("trellis{bits}"));
        let params = LayerParams {
            method: Method::Yaqa,
            quantizer: QuantizerSpec::Trellis { bits },
            round: yaqa_core::backend::RoundParams::default(),
            ..LayerParams::default()
        };
        assert_eq!(
            (params.round.tile_rows, params.round.tile_cols),
            yaqa_core::quant::trellis::TILE
        );
        let whole = dir.join("whole.safetensors");
        let (o, quantized) = run(&model, &f, &params, &whole, None);
        assert!(o.finished && o.done.len() == 14);
        // Resuming is quantizer-independent; once (at 2 bits) keeps the test short.
        if bits == 2 {
            let resumed = dir.join("resumed.safetensors");
            run(&model, &f, &params, &resumed, Some(4));
            assert!(run(&model, &f, &params, &resumed, None).0.finished);
            assert_eq!(
                std::fs::read(&whole).unwrap(),
                std::fs::read(&resumed).unwrap(),
                "trellis{bits}: resumed output differs"
            );
        }
        let file = QuantFile::open(&whole).unwrap();
        for (id, q) in &quantized {
            let w_hat = file.dequantize(&Cpu::default(), *id).unwrap();
            assert!(
                w_hat
                    .data
                    .iter()
                    .zip(&q.w_hat.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "trellis{bits}: {} dequantizes differently",
                id.name()
            );
            assert_eq!(q.report.bits_per_weight, f64::from(bits));
            assert_ne!(q.w_hat, *model.layers[id.block].linear(id.kind));
        }
        assert_eq!(code_bytes(&file) * 8, weights * bits as usize);

        // The same length of header text with a width the trellis does not take (in the run header and
        // every layer entry).
        let bytes = std::fs::read(&whole).unwrap();
        // serde_json writes the keys in order: `{"bits":k,"kind":"trellis"}`, escaped inside the metadata.
        let needle = format!("bits\\\":{bits},\\\"kind\\\":\\\"trellis");
        let bad = needle.replace(&format!(":{bits},"), ":7,");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(&needle), "header spelling changed: {needle}");
        let corrupt = dir.join("corrupt.safetensors");
        let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut changed = String::from_utf8(bytes[..header_len].to_vec())
            .unwrap()
            .replace(&needle, &bad)
            .into_bytes();
        changed.extend_from_slice(&bytes[header_len..]);
        std::fs::write(&corrupt, changed).unwrap();
        let file = QuantFile::open(&corrupt).unwrap();
        let Err(err) = file.dequantize(&Cpu::default(), o.done[0].0) else {
            panic!("a trellis of 7 bits was read")
        };
        let err = err.to_string();
        assert!(
            err.contains("corrupt.safetensors") && err.contains("bits"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Every byte below `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                folder_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// `compare`'s preflight asks the file system for what the run then writes into `--work`: at least that,
/// and not more than three times it (the checkpoint of the largest factor set is counted once more, and
/// is gone at the end).
#[test]
fn compare_plans_at_least_what_it_writes_into_its_work_folder() {
    use yaqa_model::job::compare::{self, CompareConfig, CompareMethod};
    use yaqa_model::job::evaluate::EvalText;
    use yaqa_model::job::{CalibConfig, Grid};
    let dir = scratch("compare-work");
    let config = yaqa_model::ModelConfig {
        vocab_size: 64,
        hidden_size: 64,
        intermediate_size: 128,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ..tiny_config(Family::Llama, true)
    };
    let model = Model::synthetic(config, 12);
    let model_dir = dir.join("model");
    yaqa_model::formats::hf::write_hf(&model, &model_dir).unwrap();
    let args = CompareConfig {
        model: model_dir,
        calib: CalibConfig {
            n_seqs: 3,
            seq_len: 10,
            ..CalibConfig::default()
        },
        passes: 3,
        grids: vec![Grid::Int(2), Grid::Int(4)],
        methods: CompareMethod::ALL.to_vec(),
        eval: EvalText {
            window: 8,
            n_windows: 2,
            ..EvalText::default()
        },
        work: dir.join("work"),
        ..CompareConfig::default()
    };
    compare::run(
        &Cpu::default(),
        &args,
        None,
        &yaqa_model::job::progress::Silent,
    )
    .unwrap();
    let written = folder_bytes(&args.work);
    let planned = compare::work_bytes(&model.config, &args);
    assert!(
        planned >= written && planned <= 3 * written,
        "planned {planned} bytes, wrote {written}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
