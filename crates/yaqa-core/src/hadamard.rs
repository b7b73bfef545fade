//! Hadamard-type orthogonal transforms for incoherence processing (DESIGN.md §3.2).
