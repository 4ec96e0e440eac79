//! Names the commit the binary is built from, for `s3-ingest --version`,
//! the start-up log line and the `s3_ingest_build_info` metric:
//! `S3_INGEST_COMMIT` when set (the image build passes it: `.git` is not
//! in its context), else `git rev-parse` of the checkout, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=S3_INGEST_COMMIT");
    // A commit or checkout moves HEAD's reflog; watching it (not the ref
    // files, which may be packed) reruns this only when the commit can
    // have changed.
    for path in [".git/HEAD", ".git/logs/HEAD"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("S3_INGEST_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=S3_INGEST_COMMIT={}", commit.trim());
}

fn git_commit() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
