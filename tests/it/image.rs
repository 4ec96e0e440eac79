//! The container image's build context: what `Dockerfile` builds from,
//! the repository's tracked files less what `.dockerignore` drops. Building
//! the image takes minutes (`make image`), so `make test` checks here, in
//! about a second, that the context still holds every file `Cargo.toml`
//! needs: cargo itself reads the manifest in a copy of the context, and
//! every tracked source file must be in it.
//!
//! `.dockerignore` rules as Docker applies them: each line is a pattern
//! relative to the context root (`*` stays within a path segment, `**`
//! spans segments); a pattern that matches a directory matches everything
//! under it; `!` re-includes; the last matching line wins.

use std::path::{Path, PathBuf};
use std::process::Command;

use globset::GlobMatcher;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Rule {
    glob: GlobMatcher,
    include: bool,
}

fn dockerignore_rules(text: &str) -> Vec<Rule> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .unwrap_or_else(|err| panic!(".dockerignore: {line:?}: {err}"))
                .compile_matcher();
            Rule { glob, include }
        })
        .collect()
}

/// Whether `path` (relative, `/`-separated) is sent to the build.
fn in_context(rules: &[Rule], path: &str) -> bool {
    let mut included = true;
    for rule in rules {
        // The path itself or any directory above it.
        let mut prefix = Some(path);
        let mut matched = false;
        while let Some(candidate) = prefix {
            if rule.glob.is_match(candidate) {
                matched = true;
                break;
            }
            prefix = candidate.rsplit_once('/').map(|(parent, _)| parent);
        }
        if matched {
            included = rule.include;
        }
    }
    included
}

fn tracked_files(root: &Path) -> Vec<String> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git ls-files (the test reads the checkout's tracked files)");
    assert!(
        output.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
        .stdout
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8(name.to_vec()).unwrap())
        .collect()
}

#[test]
fn dockerignore_rules_follow_dockers_matching() {
    let _suite = crate::shared_blocking();
    let rules = dockerignore_rules("*\n!src\n!tests/it/*.rs\nsrc/secret.rs\n# note\n");
    assert!(in_context(&rules, "src/main.rs"));
    assert!(in_context(&rules, "src/sink/http/mod.rs"));
    assert!(!in_context(&rules, "src/secret.rs"));
    assert!(in_context(&rules, "tests/it/main.rs"));
    assert!(!in_context(&rules, "tests/it/util/mod.rs"));
    assert!(!in_context(&rules, "README.md"));
    assert!(!in_context(&rules, "target/debug/s3-ingest"));
    let rules = dockerignore_rules("target\n**/*.tmp\n");
    assert!(!in_context(&rules, "target/release/x"));
    assert!(!in_context(&rules, "src/a.tmp"));
    assert!(in_context(&rules, "src/target.rs"));
}

/// Fails when a declared target (`[[bench]]`, `[[test]]`, the library and
/// binary) or a source file would be missing from the image build: cargo
/// refuses a manifest whose targets' files are absent, and the image's
/// `cargo build` would fail the same way.
#[test]
fn the_image_build_context_holds_what_cargo_needs() {
    let _suite = crate::shared_blocking();
    let root = repo_root();
    let rules = dockerignore_rules(&std::fs::read_to_string(root.join(".dockerignore")).unwrap());
    let files = tracked_files(&root);
    let context = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for file in &files {
        if in_context(&rules, file) {
            let to = context.path().join(file);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(root.join(file), &to).unwrap();
            copied += 1;
        } else {
            assert!(
                !file.starts_with("src/")
                    && !matches!(file.as_str(), "Cargo.toml" | "Cargo.lock" | "build.rs"),
                "{file} is left out of the image build context by .dockerignore"
            );
        }
    }
    assert!(copied > 0, "the build context is empty");

    // `cargo fetch` parses the manifest as `cargo build` does (a declared
    // target without its file is an error; `cargo metadata` only drops
    // it), and `--locked` fails on a Cargo.lock that does not match
    // Cargo.toml, as the image's `cargo build --locked` would.
    let output = Command::new(env!("CARGO"))
        .args(["fetch", "--locked", "--offline"])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo cannot build from the image build context (.dockerignore leaves out a file it needs, or Cargo.lock is stale): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo metadata in the build context: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every target cargo found there points at a file that was sent.
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let targets = metadata["packages"][0]["targets"].as_array().unwrap();
    assert!(
        targets.iter().any(|t| t["name"] == "s3-ingest"
            && t["kind"].as_array().unwrap().iter().any(|k| k == "bin")),
        "no s3-ingest binary in the build context's manifest"
    );
    for target in targets {
        let path = Path::new(target["src_path"].as_str().unwrap());
        assert!(
            path.exists(),
            "{} is missing from the context",
            path.display()
        );
    }

    // The Dockerfile sends the whole context to the build stage, so what
    // is in the context is what cargo sees there.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile
            .lines()
            .any(|line| line.trim_start().starts_with("COPY . ")),
        "the Dockerfile no longer copies the whole context (COPY . …): check what its build stage lacks"
    );
}
