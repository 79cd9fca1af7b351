//! The one rule for tests that need something the machine may lack (a tool on PATH, a
//! Docker engine, root for network namespaces): outside CI such a test is skipped with a
//! note that says what is missing and how to get it; under CI (`CI` set) it fails, so a
//! green CI run never hides a skipped test.

use std::path::PathBuf;

/// Whether the test may run. `Err(why)` skips it (with `fix` as the hint) or, under CI,
/// fails it.
#[track_caller]
pub fn require(check: Result<(), String>, fix: &str) -> bool {
    match check {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run this test, but {why} ({fix})"
            );
            eprintln!("skipped: {why} ({fix})");
            false
        }
    }
}

/// A program on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A program on PATH, or None after `require` (skipped, or failed under CI).
#[track_caller]
pub fn tool(name: &str, fix: &str) -> Option<PathBuf> {
    let found = on_path(name);
    let check = found
        .as_ref()
        .map(|_| ())
        .ok_or_else(|| format!("{name} is not on PATH"));
    require(check, fix).then_some(()).and(found)
}
