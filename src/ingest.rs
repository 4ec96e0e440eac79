//! One object's pipeline: open it (one GET, which also pins the version),
//! stream and decode it on a blocking thread, write the batches to the
//! route's sinks, commit.
//!
//! ```text
//! S3 GetObject ──bytes──► decode (blocking thread) ──batches──► sink writer(s) ──► commit each
//! ```
//! The stages are joined by small bounded channels, so a slow sink slows
//! the download instead of filling memory. If any stage fails, the channels
//! close, the others stop, and nothing is committed.
//!
//! A route with several sinks (fan-out) writes every batch to each of them
//! and commits them one after another in the route's order. If one fails,
//! the ones before it have already committed; that is safe because every
//! sink's commit is idempotent per object version, so the retry (or the
//! replay after a fix) lands the object once in each.

use std::io::Read;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::config::{CsvOptions, FileFormat};
use crate::contract::{Contract, ContractOutcome, FileContract};
use crate::decode::DecodeSummary;
use crate::decode::compression::Codec;
use crate::decode::csv::{CsvJob, decode_csv};
use crate::decode::parquet::{ParquetLimits, decode_parquet};
use crate::error::IngestError;
use crate::group::{GroupTicket, Groups};
use crate::notification::{ObjectRef, Origin};
use crate::object::{ObjectTail, PARQUET_TAIL_BYTES, PinnedObject, S3Objects, S3ParquetReader};
use crate::route::{ObjectPlan, PlannedFormat};
use crate::sink::{
    CommitReceipt, CommitState, GroupMember, Lineage, Sink, SinkWriter, SinksByName,
};

/// Downloaded chunks waiting for the decoder.
const BYTE_CHANNEL_CHUNKS: usize = 8;
/// The CPU pool size from which a large CSV object is decoded in chunks
/// (`decode/csv/parallel.rs`) rather than as one stream.
const CSV_CHUNKS_FROM_THREADS: usize = 3;
/// Decoded batches waiting for the sink.
const BATCH_CHANNEL_BATCHES: usize = 2;

/// What opening an object read, by format.
enum Opened {
    /// A CSV object's body, not yet read, and how to parse it.
    Stream(ByteStream, CsvOptions),
    /// A Parquet object's tail (its footer).
    Tail(ObjectTail),
}

/// The result of a committed object.
#[derive(Debug, Clone)]
pub struct Committed {
    pub lineage: Lineage,
    /// The rows the route's sinks committed (all the file's, unless its
    /// contract quarantined some).
    pub rows: u64,
    pub batches: u64,
    /// One receipt per sink, in commit order (a quarantine sink first).
    pub receipts: Vec<(String, CommitReceipt)>,
    /// What the route's contract made of the file, when it has one.
    pub contract: Option<Box<ContractOutcome>>,
}

impl Committed {
    /// Where the data is now, for logs: `location` or `sink=location, ...`.
    pub fn locations(&self) -> String {
        match self.receipts.as_slice() {
            [(_, receipt)] => receipt.location.clone(),
            receipts => receipts
                .iter()
                .map(|(sink, receipt)| format!("{sink}={}", receipt.location))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Every sink already held this object version: a redelivery.
    pub fn already_committed(&self) -> bool {
        self.receipts
            .iter()
            .all(|(_, receipt)| receipt.already_committed)
    }
}

/// What to do with an object, decided before it is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precheck {
    /// Download, decode and commit `object`: the object as named, or for
    /// a replay of a version that is no longer current, the current one
    /// (`superseded` then names the version that failed).
    Ingest {
        object: ObjectRef,
        superseded: Option<String>,
    },
    /// Every sink of the route already holds the version to ingest.
    AlreadyCommitted { superseded: Option<String> },
    /// A replay of an object that has no current version any more.
    Gone,
}

impl Precheck {
    /// Ingest `object` as named.
    pub fn ingest(object: &ObjectRef) -> Precheck {
        Precheck::Ingest {
            object: object.clone(),
            superseded: None,
        }
    }

    /// The `reason` label of `s3_ingest_objects_skipped_total` for a
    /// precheck that skips the object.
    pub fn skip_reason(&self) -> Option<&'static str> {
        match self {
            Precheck::Ingest { .. } => None,
            Precheck::AlreadyCommitted { .. } => Some("already_committed"),
            Precheck::Gone => Some("gone"),
        }
    }
}

/// What ingesting an object came to.
pub enum Ingested {
    /// Every sink of the plan committed it.
    Committed(Committed),
    /// Its rows joined a group (the route has `group`): the ticket says
    /// when the group committed them. The object needs no slot meanwhile.
    Grouped(GroupTicket),
}

/// The seam between the worker and the pipeline: the worker hands it one
/// routed object and learns whether every sink committed it. `Ingestor`
/// is the real pipeline; the worker's tests script outcomes through it.
#[async_trait::async_trait]
pub trait Ingest: Send + Sync {
    /// Ingests one object as `plan` says: committed by every sink of the
    /// plan, or in a group that will be.
    async fn ingest(&self, object: &ObjectRef, plan: &ObjectPlan) -> Result<Ingested, IngestError>;

    /// Shutdown began: groups commit what they hold now.
    fn flush_groups(&self) {}

    /// Whether there is anything to do before downloading: see
    /// [`Ingestor::precheck`]. `redelivered`: this message was received
    /// before. The default ingests everything (the worker's tests).
    async fn precheck(
        &self,
        object: &ObjectRef,
        _plan: &ObjectPlan,
        _redelivered: bool,
    ) -> Result<Precheck, IngestError> {
        Ok(Precheck::ingest(object))
    }
}

#[async_trait::async_trait]
impl Ingest for Ingestor {
    async fn ingest(&self, object: &ObjectRef, plan: &ObjectPlan) -> Result<Ingested, IngestError> {
        self.ingest_object_or_group(object, plan).await
    }

    fn flush_groups(&self) {
        self.groups.flush_all();
    }

    async fn precheck(
        &self,
        object: &ObjectRef,
        plan: &ObjectPlan,
        redelivered: bool,
    ) -> Result<Precheck, IngestError> {
        Ingestor::precheck(self, object, plan, redelivered).await
    }
}

pub struct Ingestor {
    objects: S3Objects,
    sinks: SinksByName,
    groups: Arc<Groups>,
}

impl Ingestor {
    pub fn new(objects: S3Objects, sinks: SinksByName) -> Ingestor {
        Ingestor {
            objects,
            sinks,
            groups: Arc::new(Groups::new()),
        }
    }

    /// What to do with `object` before downloading it.
    ///
    /// A replay ingests the object's current version (one HeadObject):
    /// the version that failed while it is current, else the newer one,
    /// which usually came with its own notification and is then found
    /// committed; an object that no longer exists is `Gone`. A
    /// redelivery (`redelivered`), replay or backfill is looked up in the
    /// sinks first and skipped when all of them hold it. The common path,
    /// a first delivery of a notification, costs no request.
    pub async fn precheck(
        &self,
        object: &ObjectRef,
        plan: &ObjectPlan,
        redelivered: bool,
    ) -> Result<Precheck, IngestError> {
        let mut target = object.clone();
        let mut superseded = None;
        if object.origin == Origin::Replay {
            match self
                .objects
                .current_version(&object.bucket, &object.key)
                .await?
            {
                None => return Ok(Precheck::Gone),
                Some(current) if !current.is(object) => {
                    superseded = Some(
                        object
                            .version_id
                            .clone()
                            .or(object.etag.clone())
                            .unwrap_or_default(),
                    );
                    target.version_id = current.version_id;
                    target.etag = current.etag;
                    target.size = current.size;
                    target.event_time = current.last_modified.or(object.event_time);
                    target.sequencer = None;
                }
                Some(_) => {}
            }
        }
        let asks = redelivered
            || matches!(
                object.origin,
                Origin::Replay | Origin::Backfill | Origin::Reconcile
            );
        if asks {
            // Asking is a saving, not a safeguard (every sink's commit is
            // idempotent): a sink that cannot answer (an outage, a grant
            // the question needs and the write does not) does not stop
            // the object.
            match self.commit_state(&target, plan).await {
                Ok(CommitState::Committed) => {
                    return Ok(Precheck::AlreadyCommitted { superseded });
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(
                    uri = %object.s3_uri(),
                    error = %err,
                    "could not ask the sinks whether they hold this object; ingesting it (their commit is idempotent)"
                ),
            }
        }
        Ok(Precheck::Ingest {
            object: target,
            superseded,
        })
    }

    /// Whether every sink of `plan` holds this object version: Committed
    /// when all say so, NotCommitted when one says not, else Unknown (a
    /// sink that cannot tell, or an object named without a version id or
    /// ETag, whose version is only known once it is read).
    pub async fn commit_state(
        &self,
        object: &ObjectRef,
        plan: &ObjectPlan,
    ) -> Result<CommitState, IngestError> {
        if object.version_id.is_none() && object.etag.is_none() {
            return Ok(CommitState::Unknown);
        }
        let lineage = Lineage {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            version_id: object.version_id.clone(),
            etag: object.etag.clone(),
            size: object.size.unwrap_or(0),
            event_time: object.event_time,
            route: plan.route.clone(),
        };
        let mut state = CommitState::Committed;
        for name in &plan.sinks {
            let sink = self
                .sinks
                .get(name)
                .expect("config validation guarantees every route's sink exists");
            match sink.is_committed(&lineage).await {
                Ok(CommitState::Committed) => {}
                Ok(CommitState::NotCommitted) => return Ok(CommitState::NotCommitted),
                Ok(CommitState::Unknown) => state = CommitState::Unknown,
                Err(err) => return Err(IngestError::from_sink(&object.s3_uri(), name, err)),
            }
        }
        Ok(state)
    }

    /// Ingests one object as `plan` says; Ok means every sink committed it.
    /// Never joins a group (the operator's commands take objects one by
    /// one).
    pub async fn ingest_object(
        &self,
        object: &ObjectRef,
        plan: &ObjectPlan,
    ) -> Result<Committed, IngestError> {
        match self.ingest_inner(object, plan, false).await? {
            Ingested::Committed(committed) => Ok(committed),
            Ingested::Grouped(_) => unreachable!("grouping was not allowed"),
        }
    }

    /// Ingests one object; with the route's `group` set and the object
    /// small enough, into a group.
    pub async fn ingest_object_or_group(
        &self,
        object: &ObjectRef,
        plan: &ObjectPlan,
    ) -> Result<Ingested, IngestError> {
        self.ingest_inner(object, plan, true).await
    }

    async fn ingest_inner(
        &self,
        object: &ObjectRef,
        plan: &ObjectPlan,
        may_group: bool,
    ) -> Result<Ingested, IngestError> {
        let uri = object.s3_uri();
        let format = plan.format.file_format();
        let sinks: Vec<Arc<dyn Sink>> = plan
            .sinks
            .iter()
            .map(|name| {
                self.sinks
                    .get(name)
                    .cloned()
                    .expect("config validation guarantees every route's sink exists")
            })
            .collect();
        // One GET opens the object and pins its version: the whole object
        // for CSV, the tail with the footer for Parquet.
        let (pinned, opened) = match &plan.format {
            PlannedFormat::Csv(options) => {
                let (pinned, body) = self.objects.open(object).await?;
                (pinned, Opened::Stream(body, options.clone()))
            }
            PlannedFormat::Parquet => {
                let (pinned, tail) = self.objects.open_tail(object, PARQUET_TAIL_BYTES).await?;
                (pinned, Opened::Tail(tail))
            }
        };
        let pinned = Arc::new(pinned);
        let lineage = Lineage {
            bucket: pinned.bucket.clone(),
            key: pinned.key.clone(),
            version_id: pinned.version_id.clone(),
            etag: pinned.etag.clone(),
            size: pinned.size,
            event_time: object.event_time,
            route: plan.route.clone(),
        };

        let (batch_tx, batch_rx) = mpsc::channel(BATCH_CHANNEL_BATCHES);
        let producer = match opened {
            Opened::Stream(body, options) => {
                self.spawn_csv(pinned.clone(), body, options, plan, batch_tx)
            }
            Opened::Tail(tail) => self.spawn_parquet(pinned.clone(), tail, plan, batch_tx),
        };
        // A route's contract sits between the decoder and the sinks.
        let (batch_rx, contract_stage) = match &plan.contract {
            Some(contract) => {
                let (good_tx, good_rx) = mpsc::channel(BATCH_CHANNEL_BATCHES);
                let stage = ContractStage {
                    contract: contract.clone(),
                    quarantine_sink: contract
                        .config
                        .quarantine_sink
                        .as_ref()
                        .map(|name| self.sink(name)),
                    lineage: lineage.clone(),
                    uri: uri.clone(),
                };
                (good_rx, Some(tokio::spawn(stage.run(batch_rx, good_tx))))
            }
            None => (batch_rx, None),
        };
        // A small object of a grouping route is collected whole, then
        // joins a group; one that turns out larger decodes (falls back to
        // its own output) as it would without grouping.
        let group = plan
            .group
            .filter(|group| may_group && lineage.size <= group.max_object_bytes.get());
        let written = match group {
            Some(group) => {
                let limit = group
                    .max_object_bytes
                    .get()
                    .saturating_mul(DECODED_PER_STORED_BYTE);
                collect_or_write(&sinks, &lineage, &uri, batch_rx, limit).await
            }
            None => write_batches(&sinks, &lineage, &uri, Vec::new(), batch_rx)
                .await
                .map(Written::Writers),
        };
        // The producer's error explains a sink-side stop better than the
        // closed channel the sink saw, and vice versa; see `first_cause`.
        let decoded = producer
            .await
            .unwrap_or_else(|err| Err(decoder_failed(&uri, format, err)));
        let contracted = match contract_stage {
            Some(stage) => stage
                .await
                .unwrap_or_else(|_| Err(IngestError::Abandoned { uri: uri.clone() })),
            None => Ok(Contracted::none()),
        };
        let produced = match (decoded, contracted) {
            (Ok(summary), Ok(contracted)) => Ok((summary, contracted)),
            (Err(decode_err), Err(contract_err)) => Err(first_cause(decode_err, contract_err)),
            (Err(err), Ok(_)) | (Ok(_), Err(err)) => Err(err),
        };
        let (writers, summary, contracted) = match (produced, written) {
            (Ok((summary, contracted)), Ok(writers)) => (writers, summary, contracted),
            (Err(produce_err), Err(write_err)) => return Err(first_cause(produce_err, write_err)),
            (Err(err), Ok(_)) | (Ok(_), Err(err)) => return Err(err),
        };
        // The decoder checks this itself; nothing commits without it.
        if let Some(expected) = summary.expected_rows
            && summary.rows != expected
        {
            return Err(IngestError::Parquet {
                uri: uri.clone(),
                detail: format!(
                    "decoded {} rows, the file declares {expected}",
                    summary.rows
                ),
            });
        }
        // What the sinks receive: the decoder's schema, or the contract's.
        let (schema, outcome) = match contracted.file {
            Some(mut file) => {
                if let Err(err) = file.finish(&summary.schema) {
                    crate::telemetry::contract_file(&lineage.route, file.outcome());
                    return Err(err);
                }
                (file.output_schema(), Some(file.outcome().clone()))
            }
            None => (summary.schema.clone(), None),
        };
        // Bad rows are committed before the good ones: once every sink
        // holds the good rows, the file's bad rows are already in quarantine.
        let mut receipts = Vec::with_capacity(sinks.len() + 1);
        if let Some(quarantine) = contracted.quarantine {
            receipts.push(quarantine.commit(&uri, outcome.as_ref()).await?);
        }
        let rows = outcome.as_ref().map_or(summary.rows, |o| o.accepted_rows);
        let writers = match (writers, group) {
            (Written::Collected(batches), Some(group)) => {
                // Groups are per schema of the rows (the decoder's when
                // there are none).
                let schema = batches.first().map_or(schema, RecordBatch::schema);
                let member = GroupMember {
                    lineage,
                    rows,
                    batches,
                    contract: outcome,
                };
                let ticket = self
                    .groups
                    .join(&sinks, group, member, summary.batches, schema)
                    .await;
                return Ok(Ingested::Grouped(ticket));
            }
            (Written::Collected(batches), None) => {
                unreachable!("collected {} batches without a group", batches.len())
            }
            (Written::Writers(writers), _) => writers,
        };
        let writers = match writers {
            Some(writers) => writers,
            // No batch at all (header-only or empty file): still commit, so
            // the sinks record that this version was ingested, with 0 rows.
            // A non-empty object committing no rows is said out loud.
            None => {
                if lineage.size > 0 {
                    tracing::warn!(
                        uri = %uri,
                        bytes = lineage.size,
                        decoded_bytes = summary.decoded_bytes,
                        "object holds no data rows (only a header, blank lines, or a Parquet file of 0 rows); committing it with 0 rows so its version is recorded"
                    );
                }
                open_writers(&sinks, &lineage, schema, &uri).await?
            }
        };
        for (sink, mut writer) in sinks.iter().zip(writers) {
            if let Some(outcome) = &outcome {
                writer.record_contract(outcome);
            }
            let receipt = writer
                .commit()
                .await
                .map_err(|err| sink_error(&uri, sink.name(), err))?;
            receipts.push((sink.name().to_owned(), receipt));
        }
        Ok(Ingested::Committed(Committed {
            lineage,
            rows,
            batches: summary.batches,
            receipts,
            contract: outcome.map(Box::new),
        }))
    }

    fn sink(&self, name: &str) -> Arc<dyn Sink> {
        self.sinks
            .get(name)
            .cloned()
            .expect("config validation guarantees every named sink exists")
    }

    /// Downloads on the runtime, decodes on a blocking thread.
    fn spawn_csv(
        &self,
        pinned: Arc<PinnedObject>,
        body: ByteStream,
        options: CsvOptions,
        plan: &ObjectPlan,
        batches: mpsc::Sender<RecordBatch>,
    ) -> tokio::task::JoinHandle<Result<DecodeSummary, IngestError>> {
        let (chunk_tx, chunk_rx) = mpsc::channel(BYTE_CHANNEL_CHUNKS);
        let objects = self.objects.clone();
        let download_pinned = pinned.clone();
        let download =
            tokio::spawn(
                async move { objects.stream_into(&download_pinned, body, chunk_tx).await },
            );
        // A contract parses the declared columns itself (see `contract/`).
        let (schema, text_columns) = match &plan.contract {
            Some(contract) => (None, contract.declared_names()),
            None => (plan.schema.clone(), Vec::new()),
        };
        let job = CsvJob {
            uri: pinned.uri(),
            options,
            schema,
            text_columns,
            batch_rows: plan.batch_rows,
            declared_codec: Codec::declared(pinned.content_encoding.as_deref(), &pinned.key),
            object_bytes: pinned.size,
            limits: plan.limits.clone(),
            // Chunks pay off only with more cores than the two stages (a
            // decoding thread, encoding on the pool) fill: on 2 cores they
            // measured 0.89 × the one-stream path (BENCHMARKS.md).
            in_parallel: crate::parallel::threads() >= CSV_CHUNKS_FROM_THREADS,
        };
        let reader = chunk_reader(chunk_rx);
        let decode = tokio::task::spawn_blocking(move || decode_csv(reader, &job, &batches));
        tokio::spawn(async move {
            let decoded = decode.await;
            let downloaded = download.await;
            // A broken download also breaks the decoder (early end of data):
            // report the download's error, which is the cause.
            match (downloaded, decoded) {
                (Ok(Err(download_err)), _) => Err(download_err),
                (_, Ok(result)) => result,
                (_, Err(join_err)) => Err(decoder_failed(&pinned.uri(), FileFormat::Csv, join_err)),
            }
        })
    }

    /// Parquet decoding drives its own ranged reads; the whole stream runs
    /// on a blocking thread so decompression and decoding stay off the
    /// runtime's I/O threads.
    fn spawn_parquet(
        &self,
        pinned: Arc<PinnedObject>,
        tail: ObjectTail,
        plan: &ObjectPlan,
        batches: mpsc::Sender<RecordBatch>,
    ) -> tokio::task::JoinHandle<Result<DecodeSummary, IngestError>> {
        let reader = S3ParquetReader::new(self.objects.clone(), pinned.clone(), tail);
        // A contract matches and casts the file's columns itself.
        let schema = match &plan.contract {
            Some(_) => None,
            None => plan.schema.clone(),
        };
        let batch_rows = plan.batch_rows;
        let limits = ParquetLimits {
            file_size: pinned.size,
            max_row_group_bytes: plan.limits.max_row_group_bytes.get(),
        };
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            runtime.block_on(decode_parquet(
                reader,
                &pinned.uri(),
                schema,
                batch_rows,
                limits,
                &batches,
            ))
        })
    }
}

/// Holds every decoded batch of one file to its route's contract: good
/// rows go on to the sinks, bad rows into the quarantine sink's writer.
struct ContractStage {
    contract: Arc<Contract>,
    quarantine_sink: Option<Arc<dyn Sink>>,
    lineage: Lineage,
    uri: String,
}

/// What the contract stage leaves for the commit.
struct Contracted {
    /// The file held to its route's contract (`None` without a contract).
    file: Option<FileContract>,
    quarantine: Option<Quarantine>,
}

impl Contracted {
    fn none() -> Contracted {
        Contracted {
            file: None,
            quarantine: None,
        }
    }
}

/// The file's bad rows, written to the quarantine sink, not committed.
struct Quarantine {
    sink: Arc<dyn Sink>,
    writer: Box<dyn SinkWriter>,
}

impl Quarantine {
    async fn commit(
        mut self,
        uri: &str,
        outcome: Option<&ContractOutcome>,
    ) -> Result<(String, CommitReceipt), IngestError> {
        if let Some(outcome) = outcome {
            self.writer.record_contract(outcome);
        }
        let name = self.sink.name().to_owned();
        let receipt = self
            .writer
            .commit()
            .await
            .map_err(|err| sink_error(uri, &name, err))?;
        Ok((name, receipt))
    }
}

impl ContractStage {
    async fn run(
        self,
        mut decoded: mpsc::Receiver<RecordBatch>,
        good: mpsc::Sender<RecordBatch>,
    ) -> Result<Contracted, IngestError> {
        let mut file = FileContract::new(self.contract.clone(), &self.uri);
        let mut quarantine: Option<Quarantine> = None;
        while let Some(batch) = decoded.recv().await {
            let applied = match file.apply(&batch) {
                Ok(applied) => applied,
                Err(err) => {
                    crate::telemetry::contract_file(&self.lineage.route, file.outcome());
                    return Err(err);
                }
            };
            if let Some(bad) = applied.bad {
                let sink = self
                    .quarantine_sink
                    .as_ref()
                    .expect("only bad_rows = \"quarantine\" passes bad rows on, with its sink");
                let open = match quarantine.as_mut() {
                    Some(open) => open,
                    None => {
                        let writer = sink
                            .open(&self.lineage, crate::contract::quarantine_schema())
                            .await
                            .map_err(|err| sink_error(&self.uri, sink.name(), err))?;
                        quarantine.insert(Quarantine {
                            sink: sink.clone(),
                            writer,
                        })
                    }
                };
                open.writer
                    .write(bad)
                    .await
                    .map_err(|err| sink_error(&self.uri, sink.name(), err))?;
            }
            if let Some(batch) = applied.good
                && good.send(batch).await.is_err()
            {
                return Err(IngestError::Abandoned { uri: self.uri });
            }
        }
        Ok(Contracted {
            file: Some(file),
            quarantine,
        })
    }
}

/// How much decoded (Arrow) memory a grouped object may take per stored
/// byte before it is written on its own instead: CSV grows about 2 × when
/// decoded, compressed files far more.
const DECODED_PER_STORED_BYTE: u64 = 8;

/// Where an object's batches went.
enum Written {
    /// Held whole in memory, for a group.
    Collected(Vec<RecordBatch>),
    /// Written to one writer per sink (uncommitted), or `None` when no
    /// batch came.
    Writers(Option<Vec<Box<dyn SinkWriter>>>),
}

/// Holds every batch in memory while they stay under `limit` bytes of
/// Arrow memory; past it, writes them and the rest to the sinks as
/// [`write_batches`] does, so a small file that decodes big costs no more
/// memory than without grouping.
async fn collect_or_write(
    sinks: &[Arc<dyn Sink>],
    lineage: &Lineage,
    uri: &str,
    mut batches: mpsc::Receiver<RecordBatch>,
    limit: u64,
) -> Result<Written, IngestError> {
    let mut collected = Vec::new();
    let mut bytes = 0u64;
    while let Some(batch) = batches.recv().await {
        bytes += batch.get_array_memory_size() as u64;
        collected.push(batch);
        if bytes > limit {
            tracing::debug!(
                uri,
                bytes,
                limit,
                "object decodes too large for a group; writing it on its own"
            );
            return write_batches(sinks, lineage, uri, collected, batches)
                .await
                .map(Written::Writers);
        }
    }
    Ok(Written::Collected(collected))
}

/// Feeds every batch (`first`, then the channel's) to one writer per
/// sink, opened on the first batch. Returns the open writers
/// (uncommitted) or `None` when no batch came.
async fn write_batches(
    sinks: &[Arc<dyn Sink>],
    lineage: &Lineage,
    uri: &str,
    first: Vec<RecordBatch>,
    mut batches: mpsc::Receiver<RecordBatch>,
) -> Result<Option<Vec<Box<dyn SinkWriter>>>, IngestError> {
    let mut writers: Option<Vec<Box<dyn SinkWriter>>> = None;
    let mut first = first.into_iter();
    loop {
        let batch = match first.next() {
            Some(batch) => batch,
            None => match batches.recv().await {
                Some(batch) => batch,
                None => break,
            },
        };
        let current = match &mut writers {
            Some(writers) => writers,
            None => writers.insert(open_writers(sinks, lineage, batch.schema(), uri).await?),
        };
        // The sinks write side by side, so a slow one does not serialise
        // the others; a batch is shared, not copied.
        futures::future::try_join_all(current.iter_mut().zip(sinks).map(|(writer, sink)| {
            let batch = batch.clone();
            async move {
                writer
                    .write(batch)
                    .await
                    .map_err(|err| sink_error(uri, sink.name(), err))
            }
        }))
        .await?;
    }
    Ok(writers)
}

async fn open_writers(
    sinks: &[Arc<dyn Sink>],
    lineage: &Lineage,
    schema: arrow::datatypes::SchemaRef,
    uri: &str,
) -> Result<Vec<Box<dyn SinkWriter>>, IngestError> {
    let mut writers = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let writer = sink
            .open(lineage, schema.clone())
            .await
            .map_err(|err| sink_error(uri, sink.name(), err))?;
        writers.push(writer);
    }
    Ok(writers)
}

fn sink_error(uri: &str, sink: &str, err: crate::sink::SinkError) -> IngestError {
    IngestError::from_sink(uri, sink, err)
}

/// The most of a panic message kept in an error (and so in a dead letter).
const PANIC_MESSAGE_BYTES: usize = 300;

/// A decode task that did not return. A panic is the decoder meeting input
/// it cannot handle: the same bytes panic on every delivery, so it is that
/// format's permanent error, never a retry. A cancelled task (the runtime
/// shutting down) is retried.
fn decoder_failed(uri: &str, format: FileFormat, err: tokio::task::JoinError) -> IngestError {
    if !err.is_panic() {
        return IngestError::Abandoned {
            uri: uri.to_owned(),
        };
    }
    let detail = format!("the decoder panicked: {}", panic_message(err.into_panic()));
    match format {
        FileFormat::Csv => IngestError::Csv {
            uri: uri.to_owned(),
            first_row: 0,
            last_row: 0,
            detail,
        },
        _ => IngestError::Parquet {
            uri: uri.to_owned(),
            detail,
        },
    }
}

/// A panic's message (`panic!` payloads are `&str` or `String`), capped at
/// [`PANIC_MESSAGE_BYTES`] on a character boundary.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let message = match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    };
    if message.len() <= PANIC_MESSAGE_BYTES {
        return message;
    }
    let mut end = PANIC_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// When both ends failed, one failure caused the other: a stage that saw
/// its neighbour vanish reports `Abandoned`, so prefer the other error.
fn first_cause(producer: IngestError, sink: IngestError) -> IngestError {
    match producer {
        IngestError::Abandoned { .. } => sink,
        _ => producer,
    }
}

/// The channel of downloaded chunks as `std::io::Read` for the decoder's
/// blocking thread. The end of the channel is the end of data; whether the
/// download was complete is checked separately. Made on the runtime (the
/// bridge keeps its handle), read on the blocking thread.
fn chunk_reader(chunks: mpsc::Receiver<Bytes>) -> impl Read + Send {
    let chunks = futures::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.recv().await?;
        Some((Ok::<_, std::io::Error>(chunk), chunks))
    });
    SyncIoBridge::new(StreamReader::new(Box::pin(chunks)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// The `JoinError` of a blocking task that panicked with `message`.
    async fn panicked(message: String) -> tokio::task::JoinError {
        tokio::task::spawn_blocking(move || std::panic::panic_any(message))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_decoder_panic_is_the_formats_permanent_error() {
        let err = decoder_failed(
            "s3://b/k.parquet",
            FileFormat::Parquet,
            panicked("column start and length should not be negative".into()).await,
        );
        assert_eq!(err.kind(), ErrorKind::ParquetError);
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("panicked: column start and length should not be negative"),
            "{err}"
        );

        let err = decoder_failed(
            "s3://b/k.csv",
            FileFormat::Csv,
            panicked("é".repeat(5000)).await,
        );
        assert_eq!(err.kind(), ErrorKind::CsvError);
        assert!(!err.is_retryable());
        let message = err.to_string();
        assert!(message.len() < PANIC_MESSAGE_BYTES + 100, "{message}");
        assert!(message.starts_with("s3://b/k.csv: CSV data: the decoder panicked: éé"));
    }

    #[tokio::test]
    async fn a_cancelled_decoder_is_retried() {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let err = decoder_failed("s3://b/k.csv", FileFormat::Csv, task.await.unwrap_err());
        assert!(err.is_retryable());
    }
}
