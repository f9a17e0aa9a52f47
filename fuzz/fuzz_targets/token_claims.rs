#![no_main]
//! Fuzz target `token_claims`: the property lives in tests/fuzz_checks, shared with the regression test
//! that replays tests/fuzz_regressions/token_claims/ in the normal suite.

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::token_claims(data));
