//! Reference GPTQ: column by column in f64 with the explicit upper Cholesky factor of `H⁻¹`.

use crate::backend::{GptqParams, Rounded};
use crate::error::Result;
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;

pub(super) fn gptq(
    w: &Mat<f32>,
    h: &SymMat,
    quantizer: &dyn TileQuantizer,
    params: &GptqParams,
) -> Result<Rounded> {
    let _ = (w, h, quantizer, params);
    todo!("gptq helper")
}
