//! llama.cpp's block grids against llama.cpp itself: `tests/data/ggml_reference.safetensors` holds an
//! 8 × 512 f32 matrix and the bytes llama.cpp's own quantizer (`ggml_quantize_chunk` of libggml from
//! llama-cpp-python 0.3.36, no importance matrix: `quantize_row_*_ref`, what `llama-quantize` runs)
//! wrote for it in every format `GgmlFormat` has; `scripts/ggml_reference.py` made it. Fitting the grid,
//! rounding to nearest and `encode_blocks` must give the same bytes. The one documented exception:
//! a `Q4_K` sub-block whose 6-bit scale is 0 decodes to one value whatever its codes, and there llama.cpp
//! keeps its search's codes where yaqa writes 0; for such blocks the test compares the scales bytewise
//! and the dequantized values.

use yaqa_core::Mat;
use yaqa_core::backend::round_to_nearest;
use yaqa_core::quant::ggml::{GgmlBlocks, GgmlFormat};
use yaqa_model::formats::gguf::{GgmlType, dequantize};
use yaqa_model::formats::hf::SafetensorsFile;
use yaqa_model::formats::llamacpp::encode_blocks;

fn reference() -> SafetensorsFile {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ggml_reference.safetensors"
    );
    SafetensorsFile::open(path).unwrap()
}

#[test]
fn round_to_nearest_writes_llama_cpps_bytes_in_every_format() {
    let file = reference();
    let (shape, x) = file.tensor_f32("x").unwrap();
    let (m, n) = (shape[0], shape[1]);
    let w = Mat::from_vec(m, n, x).unwrap();
    let mut zero_scale_blocks = 0;
    for format in GgmlFormat::ALL {
        let (_, want) = file.raw(format.name(), "U8").unwrap();
        let q = GgmlBlocks::fit(&w, format).unwrap();
        let r = round_to_nearest(&w, &q);
        let got = encode_blocks(&q, &r.codes, (m, n), |i| i);
        assert_eq!(got.len(), want.len(), "{format}");
        let size = format.block_bytes();
        for (b, (g, e)) in got.chunks(size).zip(want.chunks(size)).enumerate() {
            if g == e {
                continue;
            }
            let (row, sup) = (b / (n / format.block()), b % (n / format.block()));
            let k = q.k_scales();
            let zero_sub = k.and_then(|k| (0..8).find(|j| k.sc.at(row, 8 * sup + j) == 0.0));
            assert!(
                format == GgmlFormat::Q4_K && zero_sub.is_some(),
                "{format}: block {b} (row {row}) differs from llama.cpp's:\n{g:?}\n{e:?}"
            );
            // d, dmin and the 12 scale bytes are llama.cpp's; the codes decode to the same values.
            assert_eq!(g[..16], e[..16], "{format}: block {b}'s scales");
            let decode = |bytes: &[u8]| -> Vec<f32> {
                let codes = unpack_q4_k_codes(&bytes[16..]);
                (0..256)
                    .map(|i| q.level(row, sup * 256 + i, codes[i]))
                    .collect()
            };
            assert_eq!(decode(g), decode(e), "{format}: block {b}'s values");
            zero_scale_blocks += 1;
        }
    }
    // The planted sub-block far below its neighbours is such a block: the exception is exercised.
    assert!(zero_scale_blocks >= 1);
}

/// The 256 codes of a `block_q4_K`'s 128 code bytes.
fn unpack_q4_k_codes(qs: &[u8]) -> Vec<u16> {
    let mut codes = vec![0u16; 256];
    for (run, bytes) in qs.chunks(32).enumerate() {
        for (l, &byte) in bytes.iter().enumerate() {
            codes[64 * run + l] = (byte & 0x0F) as u16;
            codes[64 * run + 32 + l] = (byte >> 4) as u16;
        }
    }
    codes
}

/// The GGUF reader expands every block type it knows (Q6_K of llama.cpp's Q4_K_M files included) to the
/// values gguf-py (llama.cpp's own Python reader) gives the same bytes, bit for bit.
#[test]
fn the_gguf_reader_dequantizes_as_llama_cpp_does() {
    let file = reference();
    for (name, ty) in [
        ("q8_0", GgmlType::Q8_0),
        ("q4_0", GgmlType::Q4_0),
        ("q4_1", GgmlType::Q4_1),
        ("q5_0", GgmlType::Q5_0),
        ("q4_k", GgmlType::Q4_K),
        ("q6_k", GgmlType::Q6_K),
    ] {
        let (_, bytes) = file.raw(name, "U8").unwrap();
        let (_, want) = file.tensor_f32(&format!("{name}.dequantized")).unwrap();
        let got = dequantize(ty, bytes);
        assert_eq!(got.len(), want.len(), "{name}");
        let differ = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(differ, None, "{name}: first difference at {differ:?}");
    }
}
