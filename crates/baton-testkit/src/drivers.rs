//! What the driver tests and benches share: the local Docker image they run
//! (no registry is reachable from CI) and the rule for a test whose runtime
//! this machine lacks.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The image `scripts/test-image` builds from Debian's static busybox.
pub const TEST_IMAGE: &str = "baton-test/busybox:1";

/// Builds [`TEST_IMAGE`] if absent (`scripts/test-image`), once per process.
/// The error carries the script's stderr.
pub fn build_test_image() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-image");
            let out = Command::new(&script)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        })
        .clone()
}

/// A test whose runtime (`what`) is missing for `reason` skips and says so,
/// unless the environment variable `require` is set (CI sets
/// `BATON_REQUIRE_EXEC` and `BATON_REQUIRE_DOCKER`): then it fails.
pub fn skip_unless_required(require: &str, what: &str, reason: &str) {
    assert!(
        std::env::var_os(require).is_none_or(|v| v.is_empty()),
        "{require} is set but {what} cannot run here: {reason}"
    );
    eprintln!("skipped: {what} cannot run here: {reason}");
}
