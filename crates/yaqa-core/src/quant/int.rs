//! INT-k scalar quantizers (DESIGN.md §5).
