#![allow(dead_code)] // shared by several targets, each using a part
//! Counting instructions with valgrind's callgrind: a command prefix that
//! writes a profile, and the total read back from it. Used by
//! `benches/decode.rs` and `benches/support/e2e.rs`.

use std::path::Path;
use std::process::Command;

/// `valgrind --tool=callgrind` writing its profile to `profile`. The
/// profile holds the total instruction count and, read with
/// `callgrind_annotate`, where the instructions went.
pub fn command(profile: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--quiet".into(),
        format!("--callgrind-out-file={}", profile.display()),
    ]
}

/// Panics at once, with how to get it, when valgrind is not installed:
/// better than after minutes of the runs that come before the count.
pub fn require_valgrind() {
    if let Err(err) = Command::new("valgrind").arg("--version").output() {
        panic!(
            "counting instructions needs valgrind ({err}): benches/support/need-valgrind.sh installs it (make test and make bench run it)"
        );
    }
}

/// Instructions executed (`Ir`): the first number of the profile's
/// `totals:` line (more follow when other events are collected, e.g. with
/// `--cache-sim=yes` in `VALGRIND_OPTS`).
pub fn total_instructions(profile: &Path) -> u64 {
    let text = std::fs::read_to_string(profile)
        .unwrap_or_else(|err| panic!("callgrind profile {}: {err}", profile.display()));
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|totals| totals.split_whitespace().next())
        .and_then(|instructions| instructions.parse().ok())
        .unwrap_or_else(|| panic!("no totals line in {}", profile.display()))
}
