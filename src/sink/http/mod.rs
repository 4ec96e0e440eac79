//! `http`: batches POSTed to an HTTP endpoint as an Arrow IPC stream
//! (ClickHouse `INSERT INTO t FORMAT ArrowStream`) or as NDJSON (Tinybird
//! Events API, ClickHouse `FORMAT JSONEachRow`).
//!
//! # Parts
//!
//! An object's rows are cut into *parts*, each sent as one POST whose body
//! (before gzip) is at most `max_request_bytes`. Batches are encoded one by
//! one; a batch that alone exceeds the bound is halved by rows
//! (`RecordBatch::slice`) until each piece fits. Pieces fill a part in order,
//! and a part is sent as soon as the next piece would overflow it; the last
//! part is sent at `commit`. Memory stays bounded by one part plus one batch.
//! The cut points depend only on the batches and the config, and the
//! decoders cut an object into the same batches every time, so a replay of
//! the same object version produces the same parts.
//!
//! # Delivery guarantee: at-least-once with idempotency tokens
//!
//! Every part carries a token: a hash of its lineage (sink name, bucket,
//! key, version id or ETag), its part number and a hash of its exact
//! content (the body before compression). A redelivery that cuts the same
//! parts sends the same tokens. It is sent in a header
//! (`idempotency_header`) and, when configured, in a query parameter
//! (`idempotency_query_param`, e.g. ClickHouse's
//! `insert_deduplication_token`).
//!
//! An object that fits in one part is sent only at `commit`: all or nothing.
//! A larger object sends its parts while it is still being read, so if it
//! is abandoned half-way (a crash, a later decode error, shutdown) its first
//! parts have been delivered; the message comes back and the replay sends
//! those parts again with the same tokens. The receiver must deduplicate on
//! the token; the sink cannot take a part back. Likewise an object
//! dead-lettered part-way (a 400 on its third part, a bad row further down
//! the file) leaves its earlier parts at the receiver.
//!
//! The cut points depend on the route too (`batch_rows`, the schema, CSV
//! options) and on `format` and `max_request_bytes`. After any such change
//! a replay cuts other parts, and because the content is in the token,
//! they get other tokens: the replay may duplicate rows the first attempt
//! delivered, but one token never names two different contents, so the
//! receiver never drops a part it has not seen (which would lose rows).
//! Content alone is not enough: the lineage and the part number keep two
//! objects, or two parts of one object, with equal rows apart.
//!
//! # What is shown
//!
//! The URL appears in logs, errors and commit receipts with its query
//! values redacted (`?query=***`); a user or password in it is refused at
//! start-up. Header values from the environment, and static ones whose
//! names suggest a secret (`redact::is_sensitive_name`), never appear in
//! logs or `Debug` output.
//!
//! # Errors
//!
//! 429, 408, 5xx, timeouts and connection errors are retried with
//! exponential backoff (honouring a `Retry-After` in seconds), at most
//! `max_retries` times; then the object goes back to the queue (transient).
//! 401, 403 and 407 refuse the sink's credentials: a deployment problem,
//! so the object stays queued uncounted and the worker backs off. Any
//! other status is permanent: the object is dead-lettered with the status
//! and the first KiB of the response body (`text::excerpt_of`).

mod config;
mod encode;
mod send;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use reqwest::header::HeaderMap;

use super::{CommitReceipt, Lineage, Sink, SinkContext, SinkError, SinkWriter};
use config::resolve_headers;
use encode::PartEncoder;
use send::PartSender;

pub use config::{
    DEFAULT_MAX_REQUEST_BYTES, EnvHeader, HttpCompression, HttpFormat, HttpSinkConfig,
};
pub use send::idempotency_token;

pub struct HttpSink {
    name: String,
    config: Arc<HttpSinkConfig>,
    url: reqwest::Url,
    /// Static and environment headers, resolved once.
    headers: HeaderMap,
    client: reqwest::Client,
}

impl HttpSink {
    pub fn new(
        name: &str,
        config: &HttpSinkConfig,
        _context: &SinkContext,
    ) -> Result<HttpSink, SinkError> {
        // The caller names the sink: "cannot set up sink `NAME`: ...".
        let startup = SinkError::permanent;
        config
            .validate()
            .map_err(|(field, message)| startup(format!("{field}: {message}")))?;
        let url = reqwest::Url::parse(&config.url).map_err(|err| startup(err.to_string()))?;
        let headers = resolve_headers(config, |var| std::env::var(var).ok()).map_err(startup)?;
        let timeout = Duration::from_secs(config.timeout_secs);
        // reqwest with rustls verifies certificates; nothing here turns that off.
        let client = reqwest::Client::builder()
            .user_agent(concat!("s3-ingest/", env!("CARGO_PKG_VERSION")))
            // A 301/302 would turn the POST into a GET whose 200 looks like
            // success with nothing inserted: a redirect is an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|err| startup(format!("cannot build the HTTP client: {err}")))?;
        Ok(HttpSink {
            name: name.to_owned(),
            config: Arc::new(config.clone()),
            url,
            headers,
            client,
        })
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(
        &self,
        lineage: &Lineage,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let encoder = Arc::new(PartEncoder::new(self.config.format, schema)?);
        let budget = self.config.max_request_bytes;
        Ok(Box::new(HttpWriter {
            sender: PartSender {
                sink_name: self.name.clone(),
                client: self.client.clone(),
                url: self.url.clone(),
                headers: self.headers.clone(),
                config: self.config.clone(),
                lineage: lineage.clone(),
            },
            encoder,
            part: Vec::with_capacity(budget.min(1024 * 1024)),
            part_rows: 0,
            parts_sent: 0,
            rows_sent: 0,
        }))
    }
}

struct HttpWriter {
    sender: PartSender,
    /// Shared with the blocking encoder task.
    encoder: Arc<PartEncoder>,
    /// Pieces of the part being filled (header and footer added on send).
    part: Vec<u8>,
    part_rows: usize,
    parts_sent: u64,
    rows_sent: u64,
}

impl HttpWriter {
    async fn send_part(&mut self) -> Result<(), SinkError> {
        let encoder = &self.encoder;
        let mut body =
            Vec::with_capacity(encoder.header.len() + self.part.len() + encoder.footer.len());
        body.extend_from_slice(&encoder.header);
        body.append(&mut self.part);
        body.extend_from_slice(encoder.footer);
        self.sender
            .send(self.parts_sent, body, self.part_rows)
            .await?;
        self.parts_sent += 1;
        self.rows_sent += self.part_rows as u64;
        self.part_rows = 0;
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for HttpWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        let budget = self
            .encoder
            .piece_budget(self.sender.config.max_request_bytes);
        let encoder = self.encoder.clone();
        // JSON and IPC encoding are CPU work: off the async runtime.
        let pieces = tokio::task::spawn_blocking(move || encoder.pieces(&batch, budget))
            .await
            .map_err(|err| SinkError::transient(format!("encoder task failed: {err}")))??;
        for piece in pieces {
            if self.part.len() + piece.bytes.len() > budget {
                self.send_part().await?;
            }
            self.part.extend_from_slice(&piece.bytes);
            self.part_rows += piece.rows;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<CommitReceipt, SinkError> {
        // An object without rows sends nothing: there is nothing to insert,
        // and some endpoints reject an empty body.
        if self.part_rows > 0 {
            self.send_part().await?;
        }
        Ok(CommitReceipt {
            location: format!(
                "{} ({} part(s))",
                self.sender.display_url(),
                self.parts_sent
            ),
            rows: self.rows_sent,
            // The receiver dedups on the tokens; the sink cannot tell.
            already_committed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    // `lineage`, `batch` and `config` serve the submodules' tests too.

    pub(super) fn lineage(version: Option<&str>) -> Lineage {
        Lineage {
            bucket: "vendor".into(),
            key: "in/a.csv".into(),
            version_id: version.map(Into::into),
            etag: Some("etag1".into()),
            size: 10,
            event_time: None,
            route: "r".into(),
        }
    }

    pub(super) fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let ids: Vec<i64> = (0..rows).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("name {i}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    pub(super) fn config(text: &str) -> HttpSinkConfig {
        toml::from_str(text).unwrap()
    }

    fn context() -> SinkContext {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .build(),
        );
        SinkContext {
            s3,
            expected_bucket_owner: None,
            aws: Default::default(),
            add_columns_routes: Default::default(),
        }
    }

    /// reqwest's error message carries the whole URL; the receipt used
    /// the URL too. Neither may show a query value.
    #[tokio::test]
    async fn errors_and_receipts_show_no_query_values() {
        // A port nobody listens on: the connection is refused.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = config(&format!(
            "url = \"http://{addr}/insert?password=hunter2\"\nformat = \"ndjson\"\n\
             max_retries = 0\nidempotency_query_param = \"insert_deduplication_token\""
        ));
        let sink = HttpSink::new("ch", &config, &context()).unwrap();
        let writer = sink.open(&lineage(None), batch(0).schema()).await.unwrap();
        let receipt = writer.commit().await.unwrap();
        assert_eq!(
            receipt.location,
            format!("http://{addr}/insert?password=*** (0 part(s))")
        );

        let mut writer = sink.open(&lineage(None), batch(0).schema()).await.unwrap();
        writer.write(batch(3)).await.unwrap();
        let err = writer.commit().await.err().unwrap();
        // Refused connections: the endpoint is out, not the file.
        assert_eq!(
            err.class,
            crate::sink::SinkFailure::Unavailable("connect".into()),
            "{}",
            err.detail
        );
        assert!(err.detail.contains("password=***"), "{}", err.detail);
        assert!(
            !err.detail.contains("hunter2") && !err.detail.contains("insert_deduplication_token"),
            "{}",
            err.detail
        );
    }
}
