//! Bit-packing of quantization codes, the layout of `L.codes` in quantized-model files (docs/FORMAT.md).
//!
//! `k`-bit codes (`1 ≤ k ≤ 16`) are stored back to back in a little-endian bit stream: code `i` occupies
//! bits `k·i .. k·i + k` of the stream, least significant bit first, and bit `b` of the stream is bit
//! `b mod 8` of byte `b / 8`. The last byte's unused high bits are zero. `k = 8` is one byte per code,
//! `k = 16` (E8P, one code per 8 weights) one little-endian `u16` per code.
//!
//! Quantized files pack every row of a layer's `m × n` codes as its own stream ([`pack_rows`]), so each
//! row starts on a byte and a reader can seek to row `i` at `i·⌈n·k/8⌉` bytes; at the widths that divide
//! 8 and with `n` a multiple of 8 (every real model) this is byte for byte the single stream of all
//! `m·n` codes.
//!
//! Eight `k`-bit codes fill exactly `k` bytes, so both directions work on groups of eight codes through
//! one `u128` (at most 128 bits), with the width a constant of each instantiation; only the last group
//! of a stream is handled separately.

use crate::error::{ModelError, Result};

/// The widest code packed here (codes come back as `u16`).
pub const MAX_BITS: u32 = 16;

/// Bytes holding `len` codes of `bits` bits: `⌈len·k/8⌉`, saturating at `usize::MAX` (a size no buffer
/// has, so a saturated value never matches a real tensor). Readers use [`checked_packed_len`].
pub fn packed_len(len: usize, bits: u32) -> usize {
    checked_packed_len(len, bits).unwrap_or(usize::MAX)
}

/// `⌈len·k/8⌉`, or `None` when `len·k` overflows (a length read from a damaged header).
pub fn checked_packed_len(len: usize, bits: u32) -> Option<usize> {
    len.checked_mul(usize::try_from(bits).ok()?)
        .map(|b| b.div_ceil(8))
}

fn check_bits(bits: u32) -> Result<()> {
    if (1..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(ModelError::Input(format!(
            "bit-packing {bits}-bit codes: widths 1..={MAX_BITS} are supported"
        )))
    }
}

/// Packs `codes` into `out` (exactly `packed_len(codes.len(), K)` bytes); codes are below `2^K`.
fn pack_stream<const K: usize>(codes: &[u16], out: &mut [u8]) {
    let full = codes.len() / 8;
    let (body, tail) = out.split_at_mut(full * K);
    for (group, bytes) in codes.chunks_exact(8).zip(body.chunks_exact_mut(K)) {
        let mut word = 0u128;
        for (i, &c) in group.iter().enumerate() {
            word |= u128::from(c) << (K * i);
        }
        bytes.copy_from_slice(&word.to_le_bytes()[..K]);
    }
    let rest = &codes[full * 8..];
    if !rest.is_empty() {
        let mut word = 0u128;
        for (i, &c) in rest.iter().enumerate() {
            word |= u128::from(c) << (K * i);
        }
        let n_bytes = tail.len();
        tail.copy_from_slice(&word.to_le_bytes()[..n_bytes]);
    }
}

/// Unpacks `out.len()` codes from `bytes` (exactly `packed_len(out.len(), K)` bytes). Returns whether
/// the padding bits after the last code are zero.
fn unpack_stream<const K: usize>(bytes: &[u8], out: &mut [u16]) -> bool {
    let mask = (1u128 << K) - 1;
    let full = out.len() / 8;
    let (body, tail) = bytes.split_at(full * K);
    for (group, src) in out.chunks_exact_mut(8).zip(body.chunks_exact(K)) {
        let mut buf = [0u8; 16];
        buf[..K].copy_from_slice(src);
        let word = u128::from_le_bytes(buf);
        for (i, c) in group.iter_mut().enumerate() {
            // Masked to K ≤ 16 bits.
            *c = ((word >> (K * i)) & mask) as u16;
        }
    }
    let rest = &mut out[full * 8..];
    let mut buf = [0u8; 16];
    buf[..tail.len()].copy_from_slice(tail);
    let word = u128::from_le_bytes(buf);
    for (i, c) in rest.iter_mut().enumerate() {
        *c = ((word >> (K * i)) & mask) as u16;
    }
    // `rest.len() < 8`, so the shift is below 128.
    word >> (K * rest.len()) == 0
}

/// The instantiation of `$f::<K>` for a runtime width (checked to be in `1..=16` beforehand).
macro_rules! by_width {
    ($bits:expr, $f:ident($($arg:expr),*)) => {
        match $bits {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            13 => $f::<13>($($arg),*),
            14 => $f::<14>($($arg),*),
            15 => $f::<15>($($arg),*),
            16 => $f::<16>($($arg),*),
            _ => unreachable!("bit width checked by check_bits"),
        }
    };
}

/// Packs `rows × cols` codes (row-major), each row as its own stream of `⌈cols·k/8⌉` bytes.
///
/// **Shapes**: `codes` has `rows·cols` entries; the result has `rows·⌈cols·k/8⌉` bytes, row `i` at
/// `i·⌈cols·k/8⌉`. **Errors**: `bits` outside `1..=16`, a length that is not `rows·cols`, a code of
/// `2^k` or more (named by row and column).
pub fn pack_rows(codes: &[u16], rows: usize, cols: usize, bits: u32) -> Result<Vec<u8>> {
    check_bits(bits)?;
    if rows.checked_mul(cols) != Some(codes.len()) {
        return Err(ModelError::Input(format!(
            "bit-packing {rows} × {cols} codes: {} given",
            codes.len()
        )));
    }
    let max_code = (1u32 << bits) - 1;
    if let Some(at) = codes.iter().position(|&c| u32::from(c) > max_code) {
        return Err(ModelError::Input(format!(
            "bit-packing: code {} at row {}, column {} does not fit {bits} bits",
            codes[at],
            at / cols,
            at % cols
        )));
    }
    let size = checked_packed_len(cols, bits).and_then(|r| Some((r, r.checked_mul(rows)?)));
    let Some((row_bytes, total)) = size else {
        return Err(ModelError::Input(format!(
            "bit-packing {rows} × {cols} {bits}-bit codes: the packed size overflows"
        )));
    };
    let mut out = vec![0u8; total];
    if row_bytes > 0 {
        for (row, dst) in codes
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(row_bytes))
        {
            by_width!(bits, pack_stream(row, dst));
        }
    }
    Ok(out)
}

/// Inverse of [`pack_rows`]: the `rows × cols` codes, row-major.
///
/// **Errors**: `bits` outside `1..=16`, a length that is not `rows·⌈cols·k/8⌉`, a row whose padding bits
/// (after its last code) are not zero, as [`pack_rows`] never writes them.
pub fn unpack_rows(bytes: &[u8], rows: usize, cols: usize, bits: u32) -> Result<Vec<u16>> {
    check_bits(bits)?;
    // `rows` and `cols` may come from a file's header, so every product is checked.
    let row_bytes = checked_packed_len(cols, bits);
    let codes = rows.checked_mul(cols);
    let (Some(row_bytes), Some(n_codes)) = (row_bytes, codes) else {
        return Err(ModelError::Input(format!(
            "{} bytes do not hold {rows} × {cols} {bits}-bit codes: that many codes overflow",
            bytes.len()
        )));
    };
    if row_bytes.checked_mul(rows) != Some(bytes.len()) {
        return Err(ModelError::Input(format!(
            "{} bytes do not hold {rows} × {cols} {bits}-bit codes packed row by row \
             ({rows} × {row_bytes} bytes)",
            bytes.len()
        )));
    }
    let mut out = vec![0u16; n_codes];
    if row_bytes > 0 {
        for (i, (src, dst)) in bytes
            .chunks_exact(row_bytes)
            .zip(out.chunks_exact_mut(cols))
            .enumerate()
        {
            if !by_width!(bits, unpack_stream(src, dst)) {
                return Err(ModelError::Input(format!(
                    "row {i} of {bits}-bit codes has nonzero padding bits after its last code"
                )));
            }
        }
    }
    Ok(out)
}

/// Packs `codes` as one stream: [`pack_rows`] with a single row.
pub fn pack(codes: &[u16], bits: u32) -> Result<Vec<u8>> {
    pack_rows(codes, 1, codes.len(), bits)
}

/// Unpacks `len` codes from one stream: [`unpack_rows`] with a single row.
pub fn unpack(bytes: &[u8], len: usize, bits: u32) -> Result<Vec<u16>> {
    unpack_rows(bytes, 1, len, bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout read bit by bit straight from its definition: bit `b` of the stream is bit `b mod 8`
    /// of byte `b / 8`, and code `i` is bits `k·i .. k·i + k`, least significant first.
    fn spec_pack(codes: &[u16], bits: u32) -> Vec<u8> {
        let k = bits as usize;
        let mut out = vec![0u8; (codes.len() * k).div_ceil(8)];
        for (i, &c) in codes.iter().enumerate() {
            for j in 0..k {
                if (c >> j) & 1 == 1 {
                    let b = k * i + j;
                    out[b / 8] |= 1 << (b % 8);
                }
            }
        }
        out
    }

    fn random_codes(seed: u64, len: usize, bits: u32) -> Vec<u16> {
        let mut rng = yaqa_core::Rng::derive(seed, "bitpack-test");
        (0..len).map(|_| rng.below(1u64 << bits) as u16).collect()
    }

    #[test]
    fn hand_computed_bytes() {
        // k = 3, codes 1, 2, ..., 7, 0: the 24-bit number Σ c_i·2^(3i) is, most significant code first,
        // 000 111 110 101 100 011 010 001 = 0x1F58D1, stored little-endian.
        let codes = [1, 2, 3, 4, 5, 6, 7, 0];
        assert_eq!(pack(&codes, 3).unwrap(), vec![0xD1, 0x58, 0x1F]);
        assert_eq!(
            unpack(&[0xD1, 0x58, 0x1F], 8, 3).unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, 0]
        );
        // k = 2: four codes per byte, the first in the low bits.
        assert_eq!(
            pack(&[0, 1, 2, 3, 3], 2).unwrap(),
            vec![0b11_10_01_00, 0b11]
        );
        // k = 4: the first code in the low nibble.
        assert_eq!(pack(&[0xA, 0x5, 0xF], 4).unwrap(), vec![0x5A, 0x0F]);
        // k = 8 is the plain byte layout.
        assert_eq!(pack(&[7, 255, 0], 8).unwrap(), vec![7, 255, 0]);
        // k = 16 (E8P) is little-endian u16.
        assert_eq!(
            pack(&[0x1234, 0xABCD], 16).unwrap(),
            vec![0x34, 0x12, 0xCD, 0xAB]
        );
        assert_eq!(
            unpack(&[0x34, 0x12, 0xCD, 0xAB], 2, 16).unwrap(),
            vec![0x1234, 0xABCD]
        );
        // k = 3, one code: the padding bits above it are zero.
        assert_eq!(pack(&[5], 3).unwrap(), vec![5]);
    }

    #[test]
    fn round_trip_and_spec_agree_on_random_codes() {
        for bits in 1..=MAX_BITS {
            // Lengths around the eight-code groups, odd ones where n·k is not a multiple of 8.
            for len in [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1001] {
                let codes = random_codes(u64::from(bits) * 10_000 + len as u64, len, bits);
                let bytes = pack(&codes, bits).unwrap();
                assert_eq!(
                    bytes.len(),
                    packed_len(len, bits),
                    "{bits} bits, {len} codes"
                );
                assert_eq!(bytes, spec_pack(&codes, bits), "{bits} bits, {len} codes");
                let back = unpack(&bytes, len, bits).unwrap();
                assert!(
                    back.iter().zip(&codes).all(|(&b, &c)| b == c) && back.len() == len,
                    "{bits} bits, {len} codes"
                );
            }
        }
    }

    #[test]
    fn rows_are_packed_separately() {
        for (bits, rows, cols) in [
            (2, 5, 7),
            (3, 4, 5),
            (3, 3, 8),
            (4, 6, 9),
            (8, 2, 3),
            (16, 3, 5),
            (3, 3, 0),
        ] {
            let codes = random_codes(u64::from(bits) + 77, rows * cols, bits);
            let bytes = pack_rows(&codes, rows, cols, bits).unwrap();
            let row_bytes = packed_len(cols, bits);
            assert_eq!(bytes.len(), rows * row_bytes);
            for i in 0..rows {
                assert_eq!(
                    bytes[i * row_bytes..(i + 1) * row_bytes],
                    spec_pack(&codes[i * cols..(i + 1) * cols], bits),
                    "{bits} bits, row {i}"
                );
            }
            let back = unpack_rows(&bytes, rows, cols, bits).unwrap();
            assert!(back.iter().zip(&codes).all(|(&b, &c)| b == c));
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let err = pack_rows(&[1, 2, 8, 0], 2, 2, 3).unwrap_err().to_string();
        assert!(err.contains("code 8 at row 1, column 0"), "{err}");
        assert!(pack(&[0], 0).is_err());
        assert!(pack(&[0], 17).is_err());
        assert!(
            pack_rows(&[0; 5], 2, 3, 4).is_err(),
            "length is not rows·cols"
        );

        let bytes = pack_rows(&[1, 2, 3, 4, 5, 6], 2, 3, 3).unwrap();
        assert_eq!(bytes.len(), 4);
        let err = unpack_rows(&bytes[..3], 2, 3, 3).unwrap_err().to_string();
        assert!(
            err.contains("3 bytes do not hold 2 × 3 3-bit codes"),
            "{err}"
        );
        assert!(unpack_rows(&[bytes.clone(), vec![0]].concat(), 2, 3, 3).is_err());
        // Row 1 is bytes 2..4: 9 bits of codes, so bits 1 to 7 of byte 3 are padding.
        let mut dirty = bytes.clone();
        dirty[3] |= 0x80;
        let err = unpack_rows(&dirty, 2, 3, 3).unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains("padding"), "{err}");
    }
}
