//! conformance (in progress).
