//! CPU ldl (in progress).
#![allow(unused_variables, unused_imports)]
use yaqa_core::backend::*;
use yaqa_core::*;
pub(crate) fn block_ldl(h: &SymMat, params: &LdlParams) -> Result<BlockLdl> { todo!() }
