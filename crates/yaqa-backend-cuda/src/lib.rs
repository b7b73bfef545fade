//! `yaqa-backend-cuda`: the CUDA implementation of the backend trait.
