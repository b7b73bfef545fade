//! Streamed blocks (issue #24): a model whose blocks are read from their checkpoint when reached gives
//! the resident model's outputs bit for bit, reads each block once per pass when it keeps one, reads
//! nothing again when it keeps them all, and names the tensor of a bad block when it first reads it.

use std::path::PathBuf;

use yaqa_backend_cpu::Cpu;
use yaqa_model::formats::checkpoint;
use yaqa_model::formats::hf::{Half, write_hf};
use yaqa_model::transformer::decoder::Transformer;
use yaqa_model::transformer::weights::tiny_config;
use yaqa_model::{Family, Model};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("yaqa-streaming-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn streamed_blocks_give_the_resident_outputs() {
    let dir = scratch("same");
    let mut config = tiny_config(Family::Qwen2, false);
    config.n_layers = 4;
    let path = dir.join("model");
    write_hf(&Model::synthetic(config, 3), &path).unwrap();
    let resident = checkpoint::load_with(&path, None).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 5 + 1) % 37).collect();
    let cpu = Cpu::default();
    let want = Transformer::new(&resident.model, &cpu)
        .forward(&ids, 2, &mut |_, _| {})
        .unwrap();
    let mut want_pairs = Vec::new();
    let want_loss = Transformer::new(&resident.model, &cpu)
        .fisher_backward(&ids, 2, 7, &mut |b, k, x, g| {
            want_pairs.push((b, k, x.clone(), g.clone()));
            Ok(())
        })
        .unwrap();
    for keep in [1, 2, 4] {
        let streamed = checkpoint::load_with(&path, Some(keep)).unwrap();
        assert!(streamed.model.layers.is_streamed());
        assert_eq!(streamed.fingerprint, resident.fingerprint);
        let tf = Transformer::new(&streamed.model, &cpu);
        assert_eq!(tf.forward(&ids, 2, &mut |_, _| {}).unwrap(), want);
        assert_eq!(
            streamed.model.layers.loads(),
            4,
            "keep {keep}: one read per block"
        );
        let mut pairs = Vec::new();
        let loss = tf
            .fisher_backward(&ids, 2, 7, &mut |b, k, x, g| {
                pairs.push((b, k, x.clone(), g.clone()));
                Ok(())
            })
            .unwrap();
        assert_eq!(loss, want_loss, "keep {keep}");
        assert!(
            pairs == want_pairs,
            "keep {keep}: the same (x, g) of every layer"
        );
        // Fisher backward: a forward for the labels, the forward of the backward, and the blocks again
        // last first. Keeping every block reads none again; keeping one reads all but the last again.
        let loads = streamed.model.layers.loads();
        match keep {
            4 => assert_eq!(loads, 4),
            1 => assert_eq!(loads, 4 + 4 + 4 + 3),
            _ => assert!(loads > 4 && loads < 15, "keep 2: {loads}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_block_is_named_when_first_read_and_a_missing_one_at_open() {
    let dir = scratch("bad");
    let mut model = Model::synthetic(tiny_config(Family::Llama, true), 4);
    model.layers[1].up_proj.data[5] = f32::NAN;
    let path = dir.join("model");
    write_hf(&model, &path).unwrap();
    let streamed = checkpoint::load_with(&path, Some(1)).unwrap();
    let cpu = Cpu::default();
    let tf = Transformer::new(&streamed.model, &cpu);
    let err = tf.forward(&[1, 2, 3], 1, &mut |_, _| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    // A bf16 copy without block 1's down_proj fails at open, before any block is read.
    let mut tensors = yaqa_model::formats::hf::half_tensors(
        &Model::synthetic(tiny_config(Family::Llama, true), 4),
        Half::Bf16,
        |name| name == "model.layers.1.mlp.down_proj.weight",
    )
    .unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let cut = dir.join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::copy(path.join("config.json"), cut.join("config.json")).unwrap();
    yaqa_model::formats::hf::write_safetensors(
        &cut.join("model.safetensors"),
        &tensors,
        "format",
        "pt",
    )
    .unwrap();
    let err = checkpoint::load_with(&cut, Some(1)).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.down_proj.weight"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
