//! Replays every input kept in tests/fuzz_regressions/<target>/ (crashes found by
//! scripts/fuzz.sh, and hand-picked hard cases) through the same checks as the fuzz targets.

mod fuzz_checks;

use std::path::Path;

#[test]
fn fuzz_regressions_still_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut replayed = 0;
    for (target, check) in fuzz_checks::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".gitkeep"))
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", file.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no input under {}", root.display());
    // Nothing left in the temporary directory (the dotenv check writes its input to a file).
    let ours = format!("ucgate-fuzz-dotenv-{}-", std::process::id());
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&ours))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The `token_claims` check only means something if its inputs get past the signature: the
/// kept valid seed must be accepted, and the same claims under another header refused.
#[test]
fn the_token_claims_seeds_reach_the_claims_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/token_claims");
    let outcome = |name: &str| {
        let data = std::fs::read(dir.join(name)).unwrap();
        let (_, _, token) = fuzz_checks::signed_token(&data).unwrap();
        fuzz_checks::service().validate(&token)
    };
    for valid in [
        "seed-valid",
        "seed-sid-hex",
        "seed-sid-xuc",
        "seed-sid-upper-hex",
        "seed-sid-escaped",
    ] {
        assert!(outcome(valid).is_ok(), "{valid}");
    }
    for refused in [
        "seed-no-typ",
        "seed-exp-string",
        "seed-sub-number",
        "seed-expired",
    ] {
        assert!(outcome(refused).is_err(), "{refused}");
    }
}
