//! Reference proxy (in progress).
#![allow(unused_variables)]
use crate::backend::*;
use crate::error::Result;
use crate::ldl::*;
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;
pub(super) fn proxy_error(w: &Mat<f32>, w_hat: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<ProxyError> { todo!() }
