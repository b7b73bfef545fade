//! sketch (in progress).
