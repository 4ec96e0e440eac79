//! The Terraform notification module against LocalStack, end to end:
//! `infra/modules/notification` is applied from a throwaway root module
//! (bucket -> [SNS] -> SQS queue + DLQ, SQS-managed encryption), the worker
//! runs in-process against the queue and bucket Terraform created, a CSV
//! uploaded under the notification's filter lands in the `parquet_dir` sink,
//! and `terraform destroy` removes everything again.
//!
//! Needs `terraform` (or `$TERRAFORM`) and the hashicorp/aws provider in a
//! local mirror (`/opt/tf-plugins`, or `$S3I_TF_PLUGIN_DIR`); no network.
//! Without them the test fails and says what is missing: it never skips.
//!
//! Terraform's SQS calls go through [`SqsUrlProxy`]: LocalStack here hands
//! out path-style queue URLs (`SQS_ENDPOINT_STRATEGY=path`), which the AWS
//! provider refuses; see there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use s3_ingest::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::util::*;

const DEFAULT_PLUGIN_DIR: &str = "/opt/tf-plugins";

/// Terraform's own operations against LocalStack (apply, destroy) get this
/// long; they normally take seconds.
const TERRAFORM_TIMEOUT: Duration = Duration::from_secs(300);

fn plugin_dir() -> PathBuf {
    std::env::var_os("S3I_TF_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGIN_DIR))
}

fn terraform_bin() -> String {
    std::env::var("TERRAFORM").unwrap_or_else(|_| "terraform".into())
}

/// The provider binary in the mirror, or a panic that says what to install.
fn require_offline_provider() -> PathBuf {
    let dir = plugin_dir();
    let aws = dir.join("registry.terraform.io/hashicorp/aws");
    let found = std::fs::read_dir(&aws).ok().and_then(|versions| {
        versions.flatten().find_map(|version| {
            std::fs::read_dir(version.path())
                .ok()?
                .flatten()
                .find_map(|platform| {
                    std::fs::read_dir(platform.path())
                        .ok()?
                        .flatten()
                        .map(|entry| entry.path())
                        .find(|path| {
                            path.file_name().is_some_and(|name| {
                                name.to_string_lossy().starts_with("terraform-provider-aws")
                            })
                        })
                })
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no offline AWS provider at {}: tests/it/terraform.rs applies infra/modules/notification \
             to LocalStack and needs the hashicorp/aws provider in a filesystem mirror laid out as \
             <dir>/registry.terraform.io/hashicorp/aws/<version>/<os_arch>/terraform-provider-aws_* \
             (set S3I_TF_PLUGIN_DIR to use another directory). This test does not skip.",
            aws.display()
        )
    })
}

fn require_terraform() {
    let bin = terraform_bin();
    match std::process::Command::new(&bin).arg("version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`{bin} version` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => panic!(
            "cannot run terraform ({bin}: {err}): tests/it/terraform.rs needs Terraform >= 1.5 on PATH \
             (or TERRAFORM=/path/to/terraform). This test does not skip."
        ),
    }
}

/// An HTTP proxy for Terraform's SQS client that rewrites LocalStack's queue
/// URLs into the form the AWS provider accepts.
///
/// `localstack/localstack.sh` starts LocalStack with
/// `SQS_ENDPOINT_STRATEGY=path` (no DNS needed), so queue URLs look like
/// `http://127.0.0.1:4566/queue/us-east-1/000000000000/name`. The provider
/// parses a queue's name out of its URL and only accepts
/// `<scheme>://<host>/<account>/<name>`; anything else fails the apply with
/// "SQS Queue URL (...) is in the incorrect format". LocalStack accepts
/// that legacy form in requests just as well, so rewriting the responses is
/// enough, and the URLs in Terraform's outputs work for the worker too.
///
/// One request at a time per client connection; each request goes to
/// LocalStack on a fresh connection. Runs on its own thread and runtime, so
/// it outlives the test's runtime for the cleanup `terraform destroy`.
struct SqsUrlProxy {
    addr: SocketAddr,
}

impl SqsUrlProxy {
    fn start(upstream: &str) -> SqsUrlProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        if let Err(err) = proxy_connection(client, &upstream).await {
                            eprintln!("sqs url proxy: {err}");
                        }
                    });
                }
            });
        });
        SqsUrlProxy { addr }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One HTTP/1.1 message: the start line, headers (name, value), body.
struct HttpMessage {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpMessage {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Serialises with `replace` overriding (or adding) headers and a
    /// Content-Length for the body as it is now.
    fn to_bytes(&self, replace: &[(&str, &str)]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            let dropped = ["content-length", "transfer-encoding"]
                .iter()
                .chain(replace.iter().map(|(n, _)| n))
                .any(|n| name.eq_ignore_ascii_case(n));
            if !dropped {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        for (name, value) in replace {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

async fn read_line<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Reads one message; None at a clean end of stream. `bodyless` is for
/// responses that never have a body (HEAD, 1xx, 204, 304).
async fn read_message<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    bodyless: impl Fn(&str) -> bool,
) -> std::io::Result<Option<HttpMessage>> {
    let Some(start) = read_line(reader).await? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)
            .await?
            .ok_or_else(|| std::io::Error::other("stream ended inside the headers"))?;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let mut message = HttpMessage {
        start,
        headers,
        body: Vec::new(),
    };
    if bodyless(&message.start) {
        return Ok(Some(message));
    }
    if message
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let size_line = read_line(reader)
                .await?
                .ok_or_else(|| std::io::Error::other("stream ended inside a chunk"))?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .map_err(|err| {
                    std::io::Error::other(format!("bad chunk size {size_line:?}: {err}"))
                })?;
            if size == 0 {
                // Trailers, up to the empty line.
                while read_line(reader)
                    .await?
                    .is_some_and(|line| !line.is_empty())
                {}
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk).await?;
            message.body.extend_from_slice(&chunk);
            read_line(reader).await?;
        }
    } else if let Some(length) = message.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|err| std::io::Error::other(format!("bad content-length: {err}")))?;
        message.body = vec![0; length];
        reader.read_exact(&mut message.body).await?;
    } else if !message.start.starts_with("HTTP/") {
        // A request without a length has no body.
    } else {
        reader.read_to_end(&mut message.body).await?;
    }
    Ok(Some(message))
}

async fn proxy_connection(client: TcpStream, upstream: &str) -> std::io::Result<()> {
    let (client_read, mut client_write) = client.into_split();
    let mut client_read = BufReader::new(client_read);
    let queue_path = regex::bytes::Regex::new(r"/queue/[a-z0-9-]+/([0-9]{12})/").unwrap();
    while let Some(request) = read_message(&mut client_read, |_| false).await? {
        let head_request = request.start.starts_with("HEAD ");
        let mut server = BufReader::new(TcpStream::connect(upstream).await?);
        server
            .get_mut()
            .write_all(&request.to_bytes(&[
                // LocalStack builds queue URLs from the Host header: keep
                // its own address in them, not the proxy's.
                ("Host", upstream),
                // Plain bodies, so they can be rewritten.
                ("Accept-Encoding", "identity"),
                ("Connection", "close"),
            ]))
            .await?;
        let mut response = read_message(&mut server, |start| {
            head_request
                || [" 100 ", " 101 ", " 204 ", " 304 "]
                    .iter()
                    .any(|code| start.contains(code))
        })
        .await?
        .ok_or_else(|| {
            std::io::Error::other("LocalStack closed the connection without a response")
        })?;
        response.body = queue_path
            .replace_all(&response.body, &b"/$1/"[..])
            .into_owned();
        client_write
            .write_all(&response.to_bytes(&[("Connection", "keep-alive")]))
            .await?;
    }
    Ok(())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        // Never carry over local Terraform state of a developer's own runs.
        if name.to_string_lossy().starts_with(".terraform") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

/// A root module in a temporary directory: its state, TF_DATA_DIR, lock file
/// and CLI config all live there, so nothing is written into the checkout.
/// Dropping it after a successful apply destroys what was created, even when
/// the test failed half way.
struct TerraformRoot {
    dir: tempfile::TempDir,
    applied: bool,
}

impl TerraformRoot {
    /// Copies infra/modules/notification next to a main.tf that calls it
    /// with `module_arguments` and a provider pointed at LocalStack.
    fn new(sqs_endpoint: &str, module_arguments: &str) -> TerraformRoot {
        require_terraform();
        require_offline_provider();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &repo_root().join("infra/modules/notification"),
            &dir.path().join("modules/notification"),
        );
        let endpoint = endpoint();
        let main_tf = format!(
            r#"
terraform {{
  required_providers {{
    aws = {{
      source = "hashicorp/aws"
    }}
  }}
}}

# LocalStack: static credentials, path-style S3, and no calls to STS or the
# instance metadata service (LocalStack here runs s3, sqs, sns and events).
# SQS goes through the test's URL-rewriting proxy (see SqsUrlProxy).
provider "aws" {{
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  s3_use_path_style           = true
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  skip_region_validation      = true

  endpoints {{
    s3  = "{endpoint}"
    sqs = "{sqs_endpoint}"
    sns = "{endpoint}"
    kms = "{endpoint}"
    iam = "{endpoint}"
    sts = "{endpoint}"
  }}
}}

module "notification" {{
  source = "./modules/notification"
{module_arguments}
}}

output "queue_url" {{ value = module.notification.queue_url }}
output "queue_arn" {{ value = module.notification.queue_arn }}
output "dlq_url" {{ value = module.notification.dlq_url }}
output "dlq_arn" {{ value = module.notification.dlq_arn }}
output "bucket_name" {{ value = module.notification.bucket_name }}
output "kms_key_arn" {{ value = module.notification.kms_key_arn }}
output "sns_topic_arn" {{ value = module.notification.sns_topic_arn }}
"#
        );
        std::fs::write(dir.path().join("main.tf"), main_tf).unwrap();
        std::fs::write(
            dir.path().join("terraformrc"),
            "disable_checkpoint = true\n",
        )
        .unwrap();
        TerraformRoot {
            dir,
            applied: false,
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(terraform_bin());
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("TF_DATA_DIR", self.dir.path().join(".terraform-data"))
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("terraformrc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            // The provider block has its own credentials; a developer's
            // profile must not be consulted at all.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_DEFAULT_PROFILE");
        command
    }

    /// Runs terraform with `args`; panics with its output when it fails.
    async fn run(&self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::from(self.command(args));
        command.kill_on_drop(true);
        let output = tokio::time::timeout(TERRAFORM_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("terraform {args:?} took longer than {TERRAFORM_TIMEOUT:?}"))
            .unwrap_or_else(|err| panic!("cannot run terraform {args:?}: {err}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            panic!(
                "terraform {args:?} failed ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        stdout
    }

    async fn init_and_apply(&mut self) -> serde_json::Value {
        let plugin_dir = format!("-plugin-dir={}", plugin_dir().display());
        self.run(&["init", "-input=false", "-no-color", &plugin_dir])
            .await;
        // From here on, whatever part of the apply went through is destroyed
        // on drop.
        self.applied = true;
        self.run(&["apply", "-auto-approve", "-input=false", "-no-color"])
            .await;
        let outputs = self.run(&["output", "-json"]).await;
        serde_json::from_str(&outputs).expect("terraform output -json is JSON")
    }

    async fn destroy(&mut self) {
        self.run(&["destroy", "-auto-approve", "-input=false", "-no-color"])
            .await;
        self.applied = false;
    }
}

impl Drop for TerraformRoot {
    fn drop(&mut self) {
        if !self.applied {
            return;
        }
        let result = self
            .command(&["destroy", "-auto-approve", "-input=false", "-no-color"])
            .output();
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "cleanup: terraform destroy in {} failed:\n{}",
                self.dir.path().display(),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(err) => eprintln!("cleanup: cannot run terraform destroy: {err}"),
        }
    }
}

fn output(outputs: &serde_json::Value, name: &str) -> String {
    outputs[name]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("terraform output {name} is missing or not a string: {outputs}"))
        .to_owned()
}

async fn queue_attributes(
    clients: &s3_ingest::AwsClients,
    url: &str,
) -> std::collections::HashMap<QueueAttributeName, String> {
    clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "GetQueueAttributes {url}: {}",
                aws_sdk_sqs::error::DisplayErrorContext(err)
            )
        })
        .attributes
        .unwrap_or_default()
}

/// Applies the module with `fanout_via_sns`, then runs the worker on what it
/// made and ingests one CSV.
async fn notification_module_feeds_the_worker(fanout_via_sns: bool) {
    init_logging();
    let name = unique(if fanout_via_sns { "tf-sns" } else { "tf" });
    let bucket = name.clone();
    let proxy = SqsUrlProxy::start(&endpoint());
    let mut root = TerraformRoot::new(
        &proxy.endpoint(),
        &format!(
            r#"
  name                 = "{name}"
  bucket_name          = "{bucket}"
  create_bucket        = true
  bucket_force_destroy = true
  account_id           = "000000000000"
  encryption           = "sqs-managed"
  fanout_via_sns       = {fanout_via_sns}
  filters              = [{{ prefix = "incoming/", suffix = ".csv" }}]
  visibility_timeout_seconds = 30
"#
        ),
    );
    let outputs = root.init_and_apply().await;
    let queue_url = output(&outputs, "queue_url");
    let dlq_url = output(&outputs, "dlq_url");
    assert_eq!(output(&outputs, "bucket_name"), bucket);
    assert!(output(&outputs, "queue_arn").ends_with(&format!(":{name}")));
    assert!(output(&outputs, "dlq_arn").ends_with(&format!(":{name}-dlq")));
    assert!(outputs["kms_key_arn"]["value"].is_null(), "{outputs}");
    assert_eq!(
        outputs["sns_topic_arn"]["value"].is_string(),
        fanout_via_sns,
        "{outputs}"
    );

    // What the module promises about the queues.
    let clients = clients();
    let queue = queue_attributes(&clients, &queue_url).await;
    let dlq = queue_attributes(&clients, &dlq_url).await;
    assert_eq!(
        queue
            .get(&QueueAttributeName::SqsManagedSseEnabled)
            .map(String::as_str),
        Some("true"),
        "{queue:?}"
    );
    assert_eq!(
        dlq.get(&QueueAttributeName::SqsManagedSseEnabled)
            .map(String::as_str),
        Some("true"),
        "{dlq:?}"
    );
    let redrive: serde_json::Value =
        serde_json::from_str(&queue[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], output(&outputs, "dlq_arn"));
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "10"
    );
    let retention = |attributes: &std::collections::HashMap<QueueAttributeName, String>| {
        attributes[&QueueAttributeName::MessageRetentionPeriod]
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(retention(&dlq), 14 * 24 * 3600);
    assert!(retention(&dlq) > retention(&queue));

    // The worker, configured only from Terraform's outputs. The route takes
    // every key, so anything the notification filter let through by mistake
    // would show up in the sink as an extra file.
    let sink = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(&format!(
        r#"
        [aws]
        region = "us-east-1"
        endpoint_url = "{endpoint}"
        force_path_style = true

        [queue]
        url = "{queue_url}"
        dlq_url = "{dlq_url}"
        wait_time_secs = 1
        visibility_timeout_secs = 30
        max_receive_count = 5

        [worker]
        concurrency = 2
        shutdown_grace_secs = 5

        # Two of these tests run at once in one process: no fixed port.
        [status]
        listen_addr = "127.0.0.1:0"

        [[routes]]
        name = "terraform"
        bucket = "{bucket}"
        key_glob = "**"
        sink = "lake"

        [sinks.lake]
        type = "parquet_dir"
        path = "{sink}"
        "#,
        endpoint = endpoint(),
        sink = sink.path().display(),
    ))
    .expect("worker config from terraform outputs is valid");
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(s3_ingest::run_with_clients(
        config,
        clients.clone(),
        shutdown.clone(),
    ));

    let put = |key: &'static str, body: String| {
        let clients = clients.clone();
        let bucket = bucket.clone();
        async move {
            clients
                .s3
                .put_object()
                .bucket(&bucket)
                .key(key)
                .body(body.into_bytes().into())
                .send()
                .await
                .unwrap_or_else(|err| {
                    panic!(
                        "PutObject {key}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(err)
                    )
                });
        }
    };
    // Outside the filter first (prefix, then suffix), then the file that
    // matches.
    put("elsewhere/orders.csv", csv_rows(3)).await;
    put("incoming/notes.txt", "not csv\n".into()).await;
    put("incoming/orders-0001.csv", csv_rows(250)).await;

    wait_until("the CSV in the sink and an empty queue", WAIT, || async {
        !parquet_files(sink.path()).is_empty() && queue_counts(&clients, &queue_url).await == (0, 0)
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("worker stops within a minute")
        .expect("worker task did not panic")
        .expect("worker ran against the terraform-made queue without a start-up error");

    let files = parquet_files(sink.path());
    assert_eq!(
        files.len(),
        1,
        "only the filtered key is ingested: {files:?}"
    );
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&files[0]).unwrap()).unwrap();
    let source_key = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == "s3_ingest.source_key").cloned())
        .and_then(|e| e.value);
    assert_eq!(source_key.as_deref(), Some("incoming/orders-0001.csv"));
    let rows: usize = builder
        .build()
        .unwrap()
        .map(|batch| batch.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 250);

    assert_eq!(queue_counts(&clients, &queue_url).await, (0, 0));
    assert_eq!(
        queue_counts(&clients, &dlq_url).await,
        (0, 0),
        "nothing was dead-lettered"
    );

    root.destroy().await;
    let gone = clients.sqs.get_queue_url().queue_name(&name).send().await;
    assert!(gone.is_err(), "terraform destroy removed the queue");
    let gone = clients.s3.head_bucket().bucket(&bucket).send().await;
    assert!(gone.is_err(), "terraform destroy removed the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_notification_module_delivers_s3_events_to_the_worker() {
    let _suite = crate::shared().await;
    notification_module_feeds_the_worker(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_notification_module_fans_out_through_sns_to_the_worker() {
    let _suite = crate::shared().await;
    notification_module_feeds_the_worker(true).await;
}
