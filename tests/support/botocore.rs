//! botocore, an implementation of SigV4 that shares no code with the
//! operator or the Rust SDK, as the tests' oracle: installed once, pinned,
//! by tools/pyvenv.sh into the cache, and run on the fixture scripts in
//! tests/fixtures with a JSON request on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::repo_root;

/// The pinned version (tools/testenv/versions.env's BOTOCORE_VERSION, with
/// which up.sh sets the test bucket's CORS rules).
pub const VERSION: &str = "1.44.8";

/// The venv's Python, made by tools/pyvenv.sh on first use (once per
/// process: pyvenv.sh is not safe to run twice at once).
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new(repo_root().join("tools/pyvenv.sh"))
            .args([
                format!("botocore-{VERSION}"),
                format!("botocore=={VERSION}"),
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("runs tools/pyvenv.sh");
        assert!(
            out.status.success(),
            "tools/pyvenv.sh failed: {}",
            out.status
        );
        let venv = String::from_utf8(out.stdout).expect("a UTF-8 path");
        Path::new(venv.trim()).join("bin/python")
    })
}

/// Runs tests/fixtures/`script` with `input` on stdin: its stdout, or an
/// error with what it printed on stderr.
pub fn run(script: &str, input: &str) -> Result<Vec<u8>, String> {
    let mut child = Command::new(python())
        .arg(repo_root().join("tests/fixtures").join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {script}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to {script}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{script}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{script} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}
