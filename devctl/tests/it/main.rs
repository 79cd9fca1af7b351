//! devctl's integration tests, one binary (one link): the command line's contract, the
//! committed observability files, and the end-to-end runs on both engines.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

mod cli;
mod e2e;
mod kube;
mod observability_files;

/// The checkout's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}
