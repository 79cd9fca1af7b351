//! The fuzz targets' properties (`gateway/fuzz/src/lib.rs`, included as `fuzz_checks`) over
//! their seeds, mutations of them and random bytes: a bounded, reproducible run on every test
//! run, whether or not cargo-fuzz is available.

use crate::fuzz_checks::{self as checks, run_bounded, seeds};

#[test]
fn normalize_path_properties() {
    run_bounded(checks::normalize_path, &seeds::normalize_path(), 100_000, 1);
}

#[test]
fn proxy_protocol_properties() {
    run_bounded(checks::proxy_protocol, &seeds::proxy_protocol(), 100_000, 2);
}

#[test]
fn ha_advert_properties() {
    run_bounded(checks::ha_advert, &seeds::ha_advert(), 50_000, 3);
}

#[test]
fn bearer_token_properties() {
    run_bounded(checks::bearer_token, &seeds::bearer_token(), 5_000, 4);
}
