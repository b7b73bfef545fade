//! The f64 reference backend: deliberately naive, obviously-correct loops for every backend operation.
//!
//! It is the oracle of the conformance suite, so it shares no code with any backend (STYLE.md): no
//! blocking, no SIMD, no clever orderings beyond what the operation's definition needs. It is slow;
//! use it on small shapes.

mod gptq;
mod hadamard;
mod ldl;
mod model;
mod proxy;
mod qronos;
mod round;
mod sketch;

pub use hadamard::dense_rotation;
pub use round::round_adaptive_order;

use crate::backend::{Backend, GptqParams, RoundParams, Rounded, Side};
use crate::error::Result;
use crate::ldl::{BlockLdl, LdlParams};
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;

/// The naive f64 reference implementation of [`Backend`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl Backend for Reference {
    fn name(&self) -> String {
        "reference-f64".into()
    }

    fn accumulate_xtx(&self, h_in: &mut SymMat, x: &Mat<f32>) -> Result<()> {
        sketch::accumulate_xtx(h_in, x)
    }

    fn accumulate_sketch_b(
        &self,
        h_in: &mut SymMat,
        h_out: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
    ) -> Result<()> {
        sketch::accumulate_sketch_b(h_in, h_out, x, g)
    }

    fn accumulate_sketch_a_out(
        &self,
        h_out: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
        h_in: &SymMat,
        scale: f64,
    ) -> Result<()> {
        sketch::accumulate_weighted(h_out, g, x, h_in, scale)
    }

    fn accumulate_sketch_a_in(
        &self,
        h_in: &mut SymMat,
        x: &Mat<f32>,
        g: &Mat<f32>,
        h_out: &SymMat,
        scale: f64,
    ) -> Result<()> {
        sketch::accumulate_weighted(h_in, x, g, h_out, scale)
    }

    fn hadamard_rotate(
        &self,
        w: &mut Mat<f32>,
        side: Side,
        signs: &[f32],
        inverse: bool,
    ) -> Result<()> {
        hadamard::rotate(w, side, signs, inverse)
    }

    fn rotate_factor(&self, h: &SymMat, signs: &[f32]) -> Result<SymMat> {
        hadamard::rotate_factor(h, signs)
    }

    fn block_ldl(&self, h: &SymMat, params: &LdlParams) -> Result<BlockLdl> {
        ldl::block_ldl(h, params)
    }

    fn round_adaptive(
        &self,
        w: &Mat<f32>,
        a_in: &Mat<f32>,
        a_out: Option<&Mat<f32>>,
        quantizer: &dyn TileQuantizer,
        params: &RoundParams,
    ) -> Result<Rounded> {
        round::round_adaptive_order(w, a_in, a_out, quantizer, params)
    }

    fn gptq(
        &self,
        w: &Mat<f32>,
        h: &SymMat,
        quantizer: &dyn TileQuantizer,
        params: &GptqParams,
    ) -> Result<Rounded> {
        gptq::gptq(w, h, quantizer, params)
    }

    fn qronos(
        &self,
        w: &Mat<f32>,
        h: &SymMat,
        g: &Mat<f64>,
        quantizer: &dyn TileQuantizer,
        params: &GptqParams,
    ) -> Result<Rounded> {
        qronos::qronos(w, h, g, quantizer, params)
    }

    fn weighted_error(&self, d: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<f64> {
        proxy::weighted_error(d, h_in, h_out)
    }
}
