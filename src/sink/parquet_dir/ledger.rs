//! The ledger of objects committed in groups: one small JSON file per
//! source object version, `<bucket dir>/_s3_ingest/objects/<digest>.json`,
//! naming the group output that holds its rows.
//!
//! A group **claims** each object as it adds its rows, by creating that
//! file exclusively (a hard link: either it appears whole or it was there
//! already). The claim names the group's temporary file, which its writer
//! keeps locked for as long as it lives, and the output it will be renamed
//! to. An object is committed when a claim's output exists: only the
//! group's commit (the rename) creates it, after every claim is durable.
//!
//! An existing claim is, in this order:
//! - **committed**: its output exists;
//! - **live**: its temporary file exists and is locked (a writer in this
//!   or another process, on this or another host sharing the directory);
//! - **dead**: neither (its writer failed, or was killed: the kernel
//!   drops a dead process's locks). The next claim takes the next
//!   generation, `<digest>.1.json`, `<digest>.2.json`, ... Exclusive
//!   creation makes one claimant win each generation.
//!
//! A live writer keeps its lock until after its rename, so a claim is
//! never taken over while its group can still commit. Where the
//! filesystem has no locks, a claim is live until its `expires_at`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::version_digest;
use crate::sink::Lineage;

/// Where the claims of a bucket directory live (`_`-prefixed: query
/// engines skip it when they list the directory's Parquet files).
pub(super) fn ledger_dir(bucket_dir: &Path) -> PathBuf {
    bucket_dir.join("_s3_ingest").join("objects")
}

/// Claims are looked up generation by generation; a run this long means
/// something other than failed groups is creating them.
const MAX_GENERATIONS: u32 = 1000;

/// One object's claim by a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Claim {
    /// The group's output, in the bucket directory: exists once committed.
    pub output: String,
    /// The group's temporary file, in the bucket directory, locked by its
    /// writer while the group lives.
    pub temp: String,
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    pub rows: u64,
    pub claimed_at: DateTime<Utc>,
    /// Only where locks are not supported: live until then.
    pub expires_at: DateTime<Utc>,
}

/// What claiming an object came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claimed {
    /// This group holds it now; the path is the claim's file.
    Ours(PathBuf),
    /// A committed group holds it (the claim says which).
    Committed(Box<Claim>),
    /// A live writer holds it, uncommitted.
    Elsewhere,
    /// This very group claimed it already (a duplicate delivery joined
    /// the same group): it commits, or fails, with the group.
    ThisGroup,
}

#[derive(Debug, PartialEq, Eq)]
enum ClaimState {
    Committed,
    Live,
    Dead,
}

/// Made once per group, before its first claim.
pub(super) fn create_ledger_dir(bucket_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(ledger_dir(bucket_dir))
}

fn claim_path(ledger: &Path, digest: &str, generation: u32) -> PathBuf {
    if generation == 0 {
        ledger.join(format!("{digest}.json"))
    } else {
        ledger.join(format!("{digest}.{generation}.json"))
    }
}

/// Claims `lineage` for the group `claim` describes. The ledger's
/// directory exists (the group made it, [`create_ledger_dir`]).
pub(super) fn claim(
    bucket_dir: &Path,
    lineage: &Lineage,
    claim: &Claim,
) -> std::io::Result<Claimed> {
    let ledger = ledger_dir(bucket_dir);
    let digest = version_digest(lineage);
    let text = serde_json::to_vec(claim).expect("a claim serializes");
    for generation in 0..MAX_GENERATIONS {
        let path = claim_path(&ledger, &digest, generation);
        let mut file = tempfile::Builder::new()
            .prefix(&format!(".{digest}."))
            .suffix(".tmp")
            .tempfile_in(&ledger)?;
        file.write_all(&text)?;
        // On the server before the link makes it visible: a reader on
        // another host (EFS) must never see it empty.
        file.as_file().sync_data()?;
        match file.persist_noclobber(&path) {
            Ok(_) => return Ok(Claimed::Ours(path)),
            Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err.error),
        }
        let existing = match read_claim(&path)? {
            Read::Claim(existing) => existing,
            // Gone between the two calls (nothing removes claims, so only
            // an operator did), or cut short by a crash before its group
            // synced it (so that group never committed): dead.
            Read::Missing | Read::Unreadable => continue,
        };
        if existing.temp == claim.temp {
            return Ok(Claimed::ThisGroup);
        }
        match state_of(bucket_dir, &existing)? {
            ClaimState::Committed => return Ok(Claimed::Committed(Box::new(existing))),
            ClaimState::Live => return Ok(Claimed::Elsewhere),
            ClaimState::Dead => continue,
        }
    }
    Err(std::io::Error::other(format!(
        "{MAX_GENERATIONS} claims of one object in {}: refusing to add more",
        ledger.display()
    )))
}

/// Who holds `lineage` in the ledger.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// A committed group (the claim names its file).
    Committed(Box<Claim>),
    /// A group being written, not committed yet.
    Live,
    /// Nobody: no claim, or only dead ones.
    Nobody,
}

/// Who holds `lineage`: one walk over its claims' generations.
pub(super) fn holder(bucket_dir: &Path, lineage: &Lineage) -> std::io::Result<Holder> {
    let ledger = ledger_dir(bucket_dir);
    let digest = version_digest(lineage);
    let mut holder = Holder::Nobody;
    for generation in 0..MAX_GENERATIONS {
        // Generations are created in order and never removed, so the
        // first missing one ends the list.
        let claim = match read_claim(&claim_path(&ledger, &digest, generation))? {
            Read::Missing => break,
            Read::Unreadable => continue,
            Read::Claim(claim) => claim,
        };
        match state_of(bucket_dir, &claim)? {
            ClaimState::Committed => return Ok(Holder::Committed(Box::new(claim))),
            ClaimState::Live => holder = Holder::Live,
            ClaimState::Dead => {}
        }
    }
    Ok(holder)
}

/// The committed claim of `lineage`, if any group committed it.
pub(super) fn committed_claim(
    bucket_dir: &Path,
    lineage: &Lineage,
) -> std::io::Result<Option<Claim>> {
    Ok(match holder(bucket_dir, lineage)? {
        Holder::Committed(claim) => Some(*claim),
        Holder::Live | Holder::Nobody => None,
    })
}

/// A claim file as read.
enum Read {
    Claim(Claim),
    Missing,
    /// Not a whole claim: written, but not synced before a crash (claims
    /// are synced before their group commits, so its group did not).
    Unreadable,
}

fn read_claim(path: &Path) -> std::io::Result<Read> {
    match std::fs::read(path) {
        Ok(text) => Ok(serde_json::from_slice(&text).map_or(Read::Unreadable, Read::Claim)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Read::Missing),
        Err(err) => Err(err),
    }
}

/// A claim's state. Anything but a clear answer is an error, never
/// "dead": taking over a live writer's claim would land its rows twice.
fn state_of(bucket_dir: &Path, claim: &Claim) -> std::io::Result<ClaimState> {
    let output = bucket_dir.join(&claim.output);
    if output.try_exists()? {
        return Ok(ClaimState::Committed);
    }
    // Opened for writing: NFS (EFS) grants an exclusive lock only then.
    let live = match File::options()
        .read(true)
        .write(true)
        .open(bucket_dir.join(&claim.temp))
    {
        Ok(file) => match file.try_lock() {
            // We got the lock: its writer is gone.
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(err))
                if err.kind() == std::io::ErrorKind::Unsupported =>
            {
                Utc::now() < claim.expires_at
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(err),
        },
        // Removed (its writer gave up), or renamed (committed: below).
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => return Err(err),
    };
    Ok(if live {
        ClaimState::Live
    } else if output.try_exists()? {
        // Renamed between the two looks: the group committed.
        ClaimState::Committed
    } else {
        ClaimState::Dead
    })
}

/// Makes the claims' directory entries durable (their contents were
/// synced as each was made).
pub(super) fn sync_claims(bucket_dir: &Path) -> std::io::Result<()> {
    File::open(ledger_dir(bucket_dir))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(key: &str) -> Lineage {
        Lineage {
            bucket: "vendor".into(),
            key: key.into(),
            version_id: None,
            etag: Some("e1".into()),
            size: 10,
            event_time: None,
            route: "r".into(),
        }
    }

    fn claim_for(output: &str, temp: &str) -> Claim {
        Claim {
            output: output.into(),
            temp: temp.into(),
            bucket: "vendor".into(),
            key: "k".into(),
            version_id: None,
            etag: Some("e1".into()),
            rows: 3,
            claimed_at: Utc::now(),
            expires_at: Utc::now() + chrono::Duration::hours(1),
        }
    }

    #[test]
    fn a_claim_is_live_while_its_writer_holds_the_lock_then_committed_or_dead() {
        let dir = tempfile::tempdir().unwrap();
        let bucket_dir = dir.path();
        create_ledger_dir(bucket_dir).unwrap();
        let object = lineage("in/a.csv");

        // Writer A: its temporary file, locked.
        let temp_a = bucket_dir.join(".a.tmp");
        let file_a = File::create(&temp_a).unwrap();
        file_a.lock().unwrap();
        let a = claim_for("group-a.parquet", ".a.tmp");
        let Claimed::Ours(path_a) = claim(bucket_dir, &object, &a).unwrap() else {
            panic!("the first claim wins");
        };
        assert!(
            path_a.ends_with("_s3_ingest/objects/".to_owned() + &version_digest(&object) + ".json")
        );

        // Writer B, while A lives: elsewhere, and not committed.
        let b = claim_for("group-b.parquet", ".b.tmp");
        assert_eq!(claim(bucket_dir, &object, &b).unwrap(), Claimed::Elsewhere);
        assert_eq!(holder(bucket_dir, &object).unwrap(), Holder::Live);
        assert_eq!(committed_claim(bucket_dir, &object).unwrap(), None);

        // A dies (its lock goes with it, its file stays): B takes over at
        // the next generation; a third writer then finds B live.
        drop(file_a);
        let temp_b = bucket_dir.join(".b.tmp");
        let file_b = File::create(&temp_b).unwrap();
        file_b.lock().unwrap();
        let Claimed::Ours(path_b) = claim(bucket_dir, &object, &b).unwrap() else {
            panic!("a dead writer's claim is taken over");
        };
        assert!(
            path_b.to_string_lossy().ends_with(".1.json"),
            "{}",
            path_b.display()
        );
        let c = claim_for("group-c.parquet", ".c.tmp");
        assert_eq!(claim(bucket_dir, &object, &c).unwrap(), Claimed::Elsewhere);

        // B commits (renames its file): everyone finds it committed, in B.
        std::fs::rename(&temp_b, bucket_dir.join("group-b.parquet")).unwrap();
        assert!(matches!(
            claim(bucket_dir, &object, &c).unwrap(),
            Claimed::Committed(found) if found.output == "group-b.parquet"
        ));
        let committed = committed_claim(bucket_dir, &object).unwrap().unwrap();
        assert_eq!(committed.output, "group-b.parquet");
        assert_eq!(committed.rows, 3);
        // Another object has no claim at all.
        assert_eq!(
            committed_claim(bucket_dir, &lineage("in/b.csv")).unwrap(),
            None
        );
        sync_claims(bucket_dir).unwrap();
        assert!(path_a.exists() && path_b.exists());
    }

    #[test]
    fn a_claim_cut_short_by_a_crash_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let object = lineage("in/cut.csv");
        let ledger = ledger_dir(dir.path());
        std::fs::create_dir_all(&ledger).unwrap();
        std::fs::write(claim_path(&ledger, &version_digest(&object), 0), b"{\"out").unwrap();
        assert_eq!(committed_claim(dir.path(), &object).unwrap(), None);
        let temp = File::create(dir.path().join(".a.tmp")).unwrap();
        temp.lock().unwrap();
        let Claimed::Ours(path) =
            claim(dir.path(), &object, &claim_for("group-a.parquet", ".a.tmp")).unwrap()
        else {
            panic!("an unreadable claim is taken over");
        };
        assert!(path.to_string_lossy().ends_with(".1.json"));
        std::fs::rename(
            dir.path().join(".a.tmp"),
            dir.path().join("group-a.parquet"),
        )
        .unwrap();
        let committed = committed_claim(dir.path(), &object).unwrap().unwrap();
        assert_eq!(committed.output, "group-a.parquet");
    }

    #[test]
    fn concurrent_claims_of_one_object_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let bucket_dir = dir.path().to_owned();
        create_ledger_dir(&bucket_dir).unwrap();
        let object = lineage("in/race.csv");
        let all_tried = std::sync::Barrier::new(8);
        let winners: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|writer| {
                    let bucket_dir = bucket_dir.clone();
                    let object = object.clone();
                    let all_tried = &all_tried;
                    scope.spawn(move || {
                        let temp = format!(".w{writer}.tmp");
                        let file = File::create(bucket_dir.join(&temp)).unwrap();
                        file.lock().unwrap();
                        let mine = claim_for(&format!("group-{writer}.parquet"), &temp);
                        let won = matches!(
                            claim(&bucket_dir, &object, &mine).unwrap(),
                            Claimed::Ours(_)
                        );
                        // Keep the lock until every writer has tried.
                        all_tried.wait();
                        drop(file);
                        won
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|won| **won).count(), 1);
    }
}
