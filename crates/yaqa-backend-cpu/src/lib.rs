//! `yaqa-backend-cpu`: the CPU implementation of [`yaqa_core::Backend`].
//!
//! faer does the GEMMs, Cholesky and triangular work; pulp SIMD does the quantizer search and the Hadamard
//! butterflies; rayon spreads rows, strips and independent layers over the cores. A scalar path (no
//! explicit SIMD) runs in the same tests as the SIMD path so both stay checked.

mod gemm;
mod gptq;
mod hadamard;
mod ldl;
mod model;
mod proxy;
mod qronos;
mod round;
mod sketch;

use yaqa_core::backend::{Backend, GptqParams, RoundParams, Rounded, Side};
use yaqa_core::{BlockLdl, LdlParams, Mat, Result, SymMat, TileQuantizer};

/// The CPU backend.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    /// Use explicit SIMD kernels (pulp, with run-time dispatch). `false` selects the scalar path.
    pub simd: bool,
}

impl Default for Cpu {
    fn default() -> Self {
        Self { simd: true }
    }
}

impl Cpu {
    /// The scalar path (kept for conformance testing of the SIMD kernels).
    pub fn scalar() -> Self {
        Self { simd: false }
    }
}

impl Backend for Cpu {
    fn name(&self) -> String {
        if self.simd {
            "cpu".into()
        } else {
            "cpu-scalar".into()
        }
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
        hadamard::rotate(self.simd, w, side, signs, inverse)
    }

    fn rotate_factor(&self, h: &SymMat, signs: &[f32]) -> Result<SymMat> {
        hadamard::rotate_factor(self.simd, h, signs)
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
        round::round_adaptive(w, a_in, a_out, quantizer, params)
    }

    fn gptq(
        &self,
        w: &Mat<f32>,
        h: &SymMat,
        quantizer: &dyn TileQuantizer,
        params: &GptqParams,
    ) -> Result<Rounded> {
        gptq::gptq(self.simd, w, h, quantizer, params)
    }

    fn qronos(
        &self,
        w: &Mat<f32>,
        h: &SymMat,
        g: &Mat<f64>,
        quantizer: &dyn TileQuantizer,
        params: &GptqParams,
    ) -> Result<Rounded> {
        qronos::qronos(self.simd, w, h, g, quantizer, params)
    }

    fn weighted_error(&self, d: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<f64> {
        proxy::weighted_error(d, h_in, h_out)
    }
}
