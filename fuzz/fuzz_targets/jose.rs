#![no_main]
//! Fuzz target `jose`: the property lives in tests/fuzz_checks, shared with the regression test
//! that replays tests/fuzz_regressions/jose/ in the normal suite.

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::jose(data));
