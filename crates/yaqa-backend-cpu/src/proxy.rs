//! CPU proxy (in progress).
#![allow(unused_variables, unused_imports)]
use yaqa_core::backend::*;
use yaqa_core::*;
pub(crate) fn proxy_error(w: &Mat<f32>, w_hat: &Mat<f32>, h_in: &SymMat, h_out: Option<&SymMat>) -> Result<ProxyError> { todo!() }
