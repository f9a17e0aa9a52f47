//! Secrets read from the environment or from dotenv files (XiVO's `custom.env`), with errors that
//! never quote the files: a line of them may hold a secret.

use std::path::{Path, PathBuf};

/// A dotenv file that exists but cannot be read or parsed. Names the file and the kind of
/// problem (a character position at most), never its content.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {reason}", file.display())]
pub struct EnvFileError {
    pub file: PathBuf,
    pub reason: String,
}

/// The value of environment variable `name` or, when it is unset or empty there, its value in
/// `files` (see [`find_in_files`]); with where it was found, for logs.
pub fn from_env_or_files(
    name: &str,
    files: &[PathBuf],
) -> Result<Option<(String, String)>, EnvFileError> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(Some((value, format!("environment variable {name}")))),
        _ => find_in_files(name, files),
    }
}

/// " and not defined in FILE, FILE" for an error saying where a variable was looked for.
pub fn not_defined_in(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return String::new();
    }
    let list: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
    format!(" and not defined in {}", list.join(", "))
}

/// The value of `name` in `files`, the last file that defines it winning (as if they were
/// sourced in order), with where it was found ("NAME in FILE"); `None` when none defines it, or
/// only as empty.
fn find_in_files(name: &str, files: &[PathBuf]) -> Result<Option<(String, String)>, EnvFileError> {
    let mut found = None;
    for file in files {
        if let Some(value) = read_env_file(file, name)? {
            found = Some((value, format!("{} in {}", name, file.display())));
        }
    }
    Ok(found.filter(|(v, _)| !v.is_empty()))
}

/// The value of `name` in a dotenv file (comments, quotes, `export` prefix), or None when the
/// file does not exist or does not define it.
pub fn read_env_file(file: &Path, name: &str) -> Result<Option<String>, EnvFileError> {
    let unreadable = |reason: String| EnvFileError {
        file: file.to_owned(),
        reason,
    };
    let iter = match dotenvy::from_path_iter(file) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // dotenvy's errors quote the offending line, which may hold a secret: keep only the kind.
        Err(e) => return Err(unreadable(describe(file, &e))),
    };
    let mut value = None;
    for item in iter {
        let (key, v) = item.map_err(|e| unreadable(describe(file, &e)))?;
        if key == name {
            value = Some(v);
        }
    }
    Ok(value)
}

/// What is wrong with `file`, never its text: dotenvy gives the offending line's text, which is
/// looked up in the file for its number only.
fn describe(file: &Path, e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::Io(e) => e.to_string(),
        dotenvy::Error::LineParse(text, index) => {
            // The line as dotenvy read it, not a comment that happens to hold the same text.
            let first = text.lines().next().unwrap_or_default();
            let line = std::fs::read_to_string(file)
                .ok()
                .and_then(|content| {
                    let lines: Vec<&str> = content.lines().collect();
                    lines
                        .iter()
                        .position(|l| l.trim() == first.trim())
                        .or_else(|| {
                            lines
                                .iter()
                                .position(|l| !l.trim_start().starts_with('#') && l.contains(first))
                        })
                })
                .filter(|_| !first.trim().is_empty());
            match line {
                Some(n) => format!("syntax error on line {}, at character {index}", n + 1),
                None => format!("syntax error at character {index}"),
            }
        }
        _ => "invalid file".into(),
    }
}

const MIN_LENGTH: usize = 24;
const MIN_BITS: f64 = 100.0;

/// Why a token is too weak, if it is: too short, or too little entropy. The estimate is the
/// lower of two: the alphabet its character classes suggest, and the Shannon entropy of its
/// characters (which catches "aaaa…" and repeated words).
pub fn weakness(token: &str) -> Option<String> {
    let lower = token.to_ascii_lowercase();
    if ["change", "example", "secret", "password", "xivo"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return Some("looks like a placeholder or a word, not a random value".into());
    }
    let length = token.chars().count();
    if length < MIN_LENGTH {
        return Some(format!("shorter than {MIN_LENGTH} characters"));
    }
    let bits = estimated_bits(token);
    (bits < MIN_BITS).then(|| format!("about {bits:.0} bits of entropy, {MIN_BITS:.0} wanted"))
}

fn estimated_bits(token: &str) -> f64 {
    let chars: Vec<char> = token.chars().collect();
    let n = chars.len() as f64;
    let classes = [
        chars.iter().any(char::is_ascii_lowercase).then_some(26.0),
        chars.iter().any(char::is_ascii_uppercase).then_some(26.0),
        chars.iter().any(char::is_ascii_digit).then_some(10.0),
        chars
            .iter()
            .any(|c| !c.is_ascii_alphanumeric())
            .then_some(32.0),
    ];
    let alphabet: f64 = classes.iter().flatten().sum();
    let by_classes = n * alphabet.log2();
    let mut counts = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(c).or_insert(0.0) += 1.0;
    }
    let shannon: f64 = counts
        .values()
        .map(|&k: &f64| -(k / n) * (k / n).log2())
        .sum();
    // One repeated character has an entropy of -0.0 (−1 × log2 1): print it as 0.
    by_classes.min(shannon * n).abs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_dotenv_syntax() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "# comment\nOTHER=1\nexport PLAY_AUTH_TOKEN=\"quoted value\" # trailing\nX='y'"
        )
        .unwrap();
        assert_eq!(
            read_env_file(f.path(), "PLAY_AUTH_TOKEN")
                .unwrap()
                .as_deref(),
            Some("quoted value")
        );
        assert_eq!(read_env_file(f.path(), "NOPE").unwrap(), None);
        assert_eq!(
            read_env_file(Path::new("/nonexistent/custom.env"), "X").unwrap(),
            None
        );
    }

    #[test]
    fn syntax_errors_do_not_echo_the_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "# PLAY_AUTH_TOKEN=\"topsecret\nOTHER=1\nPLAY_AUTH_TOKEN=\"topsecret"
        )
        .unwrap();
        let e = read_env_file(f.path(), "PLAY_AUTH_TOKEN")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("topsecret"), "{e}");
        assert!(e.contains("line 3"), "the line is named: {e}");
    }
}
