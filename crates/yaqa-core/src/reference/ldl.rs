//! Reference ldl (in progress).
#![allow(unused_variables)]
use crate::backend::*;
use crate::error::Result;
use crate::ldl::*;
use crate::mat::Mat;
use crate::quant::TileQuantizer;
use crate::sym::SymMat;
pub(super) fn block_ldl(h: &SymMat, params: &LdlParams) -> Result<BlockLdl> { todo!() }
