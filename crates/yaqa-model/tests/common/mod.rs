//! Shared helpers of the integration tests: locating the `../shared` fixtures next to the workspace.

use std::path::PathBuf;

/// The workplace's `shared/` folder (the workspace root's sibling), or `None` with a note on stderr.
///
/// Under `CI=true` the folder must exist, so a missing fixture fails loudly instead of passing silently.
pub fn shared_dir() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = root.join("../shared");
    if shared.join("fixtures/smollm2-135m").is_dir() {
        return Some(shared);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but the fixtures are missing: expected {} (the workspace root's sibling shared/)",
            shared.display()
        );
    }
    eprintln!(
        "NOT RUN: {} is absent, so this fixture test did not run (it runs in CI)",
        shared.display()
    );
    None
}
