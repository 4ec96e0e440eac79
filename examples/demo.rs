//! The vendor side of `make demo`: writes sample files, uploads them to the
//! demo bucket, waits until the worker has dealt with every one, and prints
//! what landed in the sink and what went to the dead-letter queue.
//!
//! Run by `examples/demo.sh`, which starts LocalStack and the worker first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::QueueAttributeName;
use clap::Parser;
use parquet::file::reader::{FileReader, SerializedFileReader};
use s3_ingest::AwsClients;
use s3_ingest::config::AwsConfig;
use s3_ingest::dead_letter::DeadLetter;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    bucket: String,
    #[arg(long)]
    queue_url: String,
    #[arg(long)]
    dlq_url: String,
    /// The parquet_dir sink's path.
    #[arg(long)]
    sink_dir: PathBuf,
    /// Where the sample files are written before upload.
    #[arg(long)]
    samples_dir: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:4566")]
    endpoint: String,
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

/// A sample file and what should become of it.
struct Sample {
    key: &'static str,
    body: Vec<u8>,
    expect: Expect,
}

#[derive(PartialEq)]
enum Expect {
    Lands,
    DeadLetter,
    Skipped,
}

fn orders_csv(first_id: i64, rows: i64) -> String {
    let mut text = String::from("order_id,customer,quantity,unit_price,ordered_at\n");
    for i in first_id..first_id + rows {
        let customer = if i % 17 == 0 {
            "NULL".to_string()
        } else {
            format!("customer-{}", i % 40)
        };
        text.push_str(&format!(
            "{i},{customer},{},{}.{:02},2026-11-27T{:02}:{:02}:00\n",
            1 + i % 9,
            3 + i % 50,
            i % 100,
            (i / 60) % 24,
            i % 60
        ));
    }
    text
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

fn prices_parquet(rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("sku", DataType::Utf8, false),
        Field::new("store_id", DataType::Int64, false),
        Field::new("price", DataType::Float64, true),
    ]));
    let skus: Vec<String> = (0..rows).map(|i| format!("SKU-{:05}", i % 2000)).collect();
    let stores: Vec<i64> = (0..rows as i64).map(|i| i % 12).collect();
    let prices: Vec<f64> = (0..rows).map(|i| 1.0 + (i % 997) as f64 / 10.0).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(skus)),
            Arc::new(Int64Array::from(stores)),
            Arc::new(Float64Array::from(prices)),
        ],
    )
    .expect("valid batch");
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(2_500))
        .build();
    let mut buffer = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buffer, schema, Some(properties))
        .expect("parquet writer");
    writer.write(&batch).expect("write parquet");
    writer.close().expect("close parquet");
    buffer
}

fn samples() -> Vec<Sample> {
    let mut broken = orders_csv(900, 5);
    broken.push_str("905,customer-5,three,4.50,2026-11-27T10:00:00\n");
    vec![
        Sample {
            key: "orders/2026-11-27/orders-0001.csv",
            body: orders_csv(1, 500).into_bytes(),
            expect: Expect::Lands,
        },
        Sample {
            key: "orders/2026-11-27/orders-0002.csv.gz",
            body: gzip(orders_csv(501, 1500).as_bytes()),
            expect: Expect::Lands,
        },
        Sample {
            key: "prices/2026-11-27/store prices.parquet",
            body: prices_parquet(10_000),
            expect: Expect::Lands,
        },
        Sample {
            key: "orders/2026-11-27/orders-0003-broken.csv",
            body: broken.into_bytes(),
            expect: Expect::DeadLetter,
        },
        Sample {
            key: "readme/NOTES.txt",
            body: b"files no route wants are skipped and counted\n".to_vec(),
            expect: Expect::Skipped,
        },
    ]
}

fn sink_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if path.is_dir() {
                pending.push(path);
            } else if !hidden && path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

async fn queue_counts(clients: &AwsClients, url: &str) -> (u64, u64) {
    let attributes = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .unwrap_or_default();
    let get = |name| {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        // A message handed back during a pause is delayed, not gone.
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            + get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let clients = AwsClients::from_config(&AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(args.endpoint.clone()),
        force_path_style: true,
        expected_bucket_owner: None,
    })
    .await;
    // A rerun should show this run's dead letters only.
    let _ = clients
        .sqs
        .purge_queue()
        .queue_url(&args.dlq_url)
        .send()
        .await;

    let samples = samples();
    std::fs::create_dir_all(&args.samples_dir).expect("samples dir");
    println!(
        "==> uploading {} vendor files to s3://{}",
        samples.len(),
        args.bucket
    );
    for sample in &samples {
        let local = args.samples_dir.join(sample.key.replace('/', "_"));
        std::fs::write(&local, &sample.body).expect("write sample");
        clients
            .s3
            .put_object()
            .bucket(&args.bucket)
            .key(sample.key)
            .body(ByteStream::from(sample.body.clone()))
            .send()
            .await
            .expect("upload sample");
        println!("    {:>8} bytes  {}", sample.body.len(), sample.key);
    }

    let landing = samples.iter().filter(|s| s.expect == Expect::Lands).count();
    let poison = samples
        .iter()
        .filter(|s| s.expect == Expect::DeadLetter)
        .count();
    println!("==> waiting for the worker: {landing} files to land, {poison} to be dead-lettered");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut dead_letters: Vec<DeadLetter> = Vec::new();
    loop {
        let output = clients
            .sqs
            .receive_message()
            .queue_url(&args.dlq_url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive from DLQ");
        for message in output.messages.unwrap_or_default() {
            if let Some(body) = message.body
                && let Ok(letter) = serde_json::from_str::<DeadLetter>(&body)
            {
                dead_letters.push(letter);
            }
            if let Some(receipt) = message.receipt_handle {
                let _ = clients
                    .sqs
                    .delete_message()
                    .queue_url(&args.dlq_url)
                    .receipt_handle(receipt)
                    .send()
                    .await;
            }
        }
        let drained = queue_counts(&clients, &args.queue_url).await == (0, 0);
        if drained && sink_files(&args.sink_dir).len() >= landing && dead_letters.len() >= poison {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("timed out after {}s; see the worker log", args.timeout_secs);
            return std::process::ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    println!("\n==> landed in the sink ({})", args.sink_dir.display());
    println!("    {:>6}  {:<42}  file", "rows", "source key");
    for path in sink_files(&args.sink_dir) {
        let reader = SerializedFileReader::new(std::fs::File::open(&path).expect("open sink file"))
            .expect("read sink file");
        let metadata = reader.metadata().file_metadata();
        let source_key = metadata
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == "s3_ingest.source_key"))
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        let name = path.strip_prefix(&args.sink_dir).unwrap_or(&path);
        println!(
            "    {:>6}  {:<42}  {}",
            metadata.num_rows(),
            source_key,
            name.display()
        );
    }
    println!("\n==> dead-letter queue");
    for letter in &dead_letters {
        println!(
            "    {}  [{}]\n        {}",
            letter.key.as_deref().unwrap_or("<message>"),
            letter.error_kind,
            letter.error
        );
    }
    let skipped: Vec<_> = samples
        .iter()
        .filter(|s| s.expect == Expect::Skipped)
        .map(|s| s.key)
        .collect();
    println!("\n==> skipped (no route matches): {}", skipped.join(", "));
    std::process::ExitCode::SUCCESS
}
