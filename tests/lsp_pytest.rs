//! Runs the LSP integration suite (tests/lsp, pytest-lsp plus a raw JSON-RPC client) against
//! the binary cargo just built. The Python packages come from scripts/install-lsp-test-deps.sh;
//! without them this test fails and says so, rather than passing without testing anything.

use std::process::Command;

#[test]
fn lsp_integration_suite() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let probe = Command::new(&python)
        .args(["-c", "import pytest_lsp, lsprotocol"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "pytest-lsp is not installed for {python}: run scripts/install-lsp-test-deps.sh first"
    );
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/lsp"])
        .current_dir(root)
        .env("FORESIGHT_BIN", env!("CARGO_BIN_EXE_foresight"))
        .status()
        .expect("cannot run pytest");
    assert!(
        status.success(),
        "the LSP integration suite failed (see its output above)"
    );
}
