//! The `yaqa` command line.

fn main() {}
