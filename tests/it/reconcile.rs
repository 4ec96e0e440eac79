//! Reconciliation on LocalStack: an object whose notification never
//! arrived is found and lands once; one task of the fleet holds the lease.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use s3_ingest::config::Config;
use s3_ingest::reconcile::state::{ReconcileState, StateStore};
use tokio_util::sync::CancellationToken;

use crate::util::{self, Fixture, FixtureOptions, WAIT, wait_until};

fn reconcile_config(fixture: &Fixture, extra: &str) -> Config {
    let routes = r#"
        [[routes]]
        name = "orders"
        key_glob = "in/**"
        sink = "lake"
    "#;
    let mut config = fixture.config(Some(routes));
    let text = format!(
        r#"
        state = "s3://{bucket}/ops/reconcile.json"
        prefixes = ["s3://{bucket}/in/"]
        interval_secs = 1
        grace_secs = 1
        page_size = 2
        since = "2020-01-01T00:00:00Z"
        {extra}
        "#,
        bucket = fixture.bucket
    );
    config.reconcile = Some(toml::from_str(&text).expect("reconcile section"));
    config
}

async fn state_of(fixture: &Fixture) -> ReconcileState {
    StateStore::new(
        fixture.clients.s3.clone(),
        fixture.bucket.clone(),
        "ops/reconcile.json".into(),
        None,
    )
    .load()
    .await
    .unwrap()
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_finds_an_object_whose_notification_never_arrived() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "reconcile",
        FixtureOptions {
            notifications: false,
            ..FixtureOptions::default()
        },
    )
    .await;
    for name in ["a", "b", "c", "d", "e"] {
        fixture
            .put(&format!("in/{name}.csv"), util::csv_rows(2))
            .await;
    }
    fixture.put("other/x.csv", util::csv_rows(2)).await;
    // Four notifications arrive (and land) before reconciliation runs;
    // the one of in/c.csv is lost.
    let plain = fixture.start_worker(fixture.config(None));
    for name in ["a", "b", "d", "e"] {
        fixture
            .send_raw(&format!("s3://{}/in/{name}.csv", fixture.bucket))
            .await;
    }
    fixture.wait_for_files_and_empty_queue(4).await;
    plain.stop().await;

    let config = reconcile_config(&fixture, "");
    let (worker, reconciler) = s3_ingest::build_worker_and_reconciler(&config, util::clients())
        .await
        .expect("worker starts");
    let reconciler = reconciler.expect("a reconciler");
    let stats = reconciler.stats();
    let stop = CancellationToken::new();
    let worker = Arc::new(worker);
    let running = tokio::spawn({
        let worker = worker.clone();
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let reconciling = tokio::spawn(reconciler.run(stop.clone()));

    fixture.wait_for_files_and_empty_queue(5).await;
    // Two complete cycles over the prefix (3 pages of 2 keys each): every
    // object was looked at, and only the one without a notification was
    // enqueued.
    wait_until("two reconciliation cycles", WAIT, || async {
        state_of(&fixture)
            .await
            .prefixes
            .get(&format!("s3://{}/in/", fixture.bucket))
            .is_some_and(|progress| progress.cycles_completed >= 2)
    })
    .await;
    assert_eq!(stats.found.load(Ordering::Relaxed), 1);
    assert!(stats.listed.load(Ordering::Relaxed) >= 10);
    let copies = fixture.sink_copies_by_key();
    assert_eq!(copies.get("in/c.csv"), Some(&1), "{copies:?}");
    assert_eq!(copies.len(), 5, "{copies:?}");
    assert!(!copies.contains_key("other/x.csv"));
    let c = util::sink_file_for(&fixture.sink_files(), "in/c.csv");
    assert!(
        c.metadata.contains_key("s3_ingest.source_event_time"),
        "the object's LastModified is its event time"
    );
    let state = state_of(&fixture).await;
    assert!(state.lease.is_some());
    assert!(state.started_at.is_some());

    stop.cancel();
    running.await.unwrap();
    reconciling.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reconciler_of_the_fleet_holds_the_lease() {
    let _suite = crate::shared().await;
    let fixture = Fixture::with_options(
        "reconcile-lease",
        FixtureOptions {
            notifications: false,
            ..FixtureOptions::default()
        },
    )
    .await;
    fixture.put("in/a.csv", util::csv_rows(1)).await;
    let config = reconcile_config(&fixture, "");
    let first = s3_ingest::build_worker_and_reconciler(&config, util::clients())
        .await
        .unwrap()
        .1
        .unwrap();
    let second = s3_ingest::build_worker_and_reconciler(&config, util::clients())
        .await
        .unwrap()
        .1
        .unwrap();

    // Racing for a fresh state: the conditional writes let one win.
    let now = chrono::Utc::now();
    let (a, b) = tokio::join!(first.tick(now), second.tick(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.leased != b.leased, "exactly one leased: {a:?} {b:?}");
    let (holder, other) = if a.leased {
        (&first, &second)
    } else {
        (&second, &first)
    };
    // The holder keeps it tick after tick; the other waits.
    assert!(holder.tick(now).await.unwrap().leased);
    assert!(!other.tick(now).await.unwrap().leased);
    // A holder that stops ticking loses it once the lease runs out (three
    // intervals, at least 30 s).
    let later = now + chrono::Duration::seconds(31);
    assert!(other.tick(later).await.unwrap().leased);
    assert!(!holder.tick(later).await.unwrap().leased);
    // The one object was enqueued once, by whoever listed it first.
    assert_eq!(
        first.stats().found.load(Ordering::Relaxed) + second.stats().found.load(Ordering::Relaxed),
        1
    );
    assert_eq!(fixture.queue_counts().await.0, 1);
}
