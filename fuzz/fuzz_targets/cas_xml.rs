#![no_main]
//! Fuzz target `cas_xml`: the property lives in tests/fuzz_checks, shared with the regression test
//! that replays tests/fuzz_regressions/cas_xml/ in the normal suite.

#[path = "../../tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::cas_xml(data));
