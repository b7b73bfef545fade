//! `yaqa round` writes its codes bit-packed row by row, through the same packer as quantized files
//! (`L.codes`, docs/FORMAT.md), with `code_bits` and `code_dim` in its header, and never replaces an
//! existing output: a second run to the same `--out` is refused before any work and leaves the file as
//! it was.

mod common;

use common::{fails, ok, s, scratch, tiny_model};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use yaqa_model::formats::bitpack;
use yaqa_model::formats::hf::{HfCheckpoint, RawTensor, write_safetensors};

#[test]
fn round_packs_its_codes_and_refuses_an_existing_output() {
    let dir = scratch("round-out");
    let model_dir = tiny_model(&dir, 4);
    let factors = dir.join("factors");
    ok(&[
        "hessian",
        "--model",
        s(&model_dir),
        "--out",
        s(&factors),
        "--sketch",
        "xtx",
        "--n-seqs",
        "2",
        "--seq-len",
        "8",
    ]);
    let model = HfCheckpoint::open(&model_dir)
        .unwrap()
        .load_model()
        .unwrap();
    let up = &model.layers[0].up_proj;
    let (m, n) = (up.rows, up.cols);
    let weights = dir.join("w.safetensors");
    write_safetensors(
        &weights,
        &[("up".to_string(), RawTensor::f32s(vec![m, n], &up.data))],
        "format",
        "pt",
    )
    .unwrap();
    let out = dir.join("r.safetensors");
    let layer_factors = factors.join("model.layers.0.mlp.up_proj.xtx.safetensors");
    let args = [
        "round",
        "--weights",
        s(&weights),
        "--factors",
        s(&layer_factors),
        "--method",
        "ldlq",
        "--quantizer",
        "int3",
        "--no-incoherence",
        "--out",
        s(&out),
    ];
    ok(&args);

    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let header: Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["yaqa"]).unwrap();
    assert_eq!(
        (header["code_bits"].as_u64(), header["code_dim"].as_u64()),
        (Some(3), Some(1))
    );
    // 3-bit codes: ⌈n·3/8⌉ bytes per row, not one byte per code.
    let row_bytes = (n * 3).div_ceil(8);
    assert!(row_bytes < n);
    let codes = st.tensor("codes").unwrap();
    assert_eq!(
        (codes.dtype(), codes.shape()),
        (Dtype::U8, &[m, row_bytes][..])
    );
    let unpacked = bitpack::unpack_rows(codes.data(), m, n, 3).unwrap();
    let w_hat = st.tensor("w_hat").unwrap();
    assert_eq!((w_hat.dtype(), w_hat.shape()), (Dtype::F32, &[m, n][..]));
    let w: Vec<f32> = w_hat
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // Without rotation each row's levels are scale·(c − z) with one positive scale: a larger code is a
    // larger weight, so the unpacked codes order every row of w_hat exactly as the grid does.
    for i in 0..m {
        for a in 0..n {
            for b in 0..n {
                let (ca, cb) = (unpacked[i * n + a], unpacked[i * n + b]);
                let (wa, wb) = (w[i * n + a], w[i * n + b]);
                assert_eq!(
                    ca.cmp(&cb),
                    wa.partial_cmp(&wb).unwrap(),
                    "row {i}: {a} vs {b}"
                );
            }
        }
    }
    assert!(
        unpacked.iter().any(|&c| c >= 4),
        "the codes use the upper half of the grid"
    );

    // A second run to the same output is refused before any work, and the file is left as it was.
    let err = fails(&args);
    assert!(
        err.contains("already exists") && err.contains(s(&out)) && err.contains("remove it"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}
