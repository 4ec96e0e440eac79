//! An in-process HTTP endpoint for the `http` sink tests, behaving like a
//! ClickHouse or Tinybird insert endpoint: it decodes each body (gzip, Arrow
//! IPC stream or NDJSON), keeps the rows, deduplicates on the idempotency
//! token, and can be scripted to fail.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

/// The header and query parameter the tests configure for tokens.
pub const TOKEN_HEADER: &str = "idempotency-key";
pub const TOKEN_QUERY_PARAM: &str = "insert_deduplication_token";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub uri: String,
    pub headers: HeaderMap,
    /// From the query parameter when present, else from the header.
    pub token: Option<String>,
    /// Body size after gunzip.
    pub decoded_bytes: usize,
    pub rows: usize,
    /// What the server answered.
    pub status: u16,
    /// Accepted before under the same token: rows not kept again.
    pub duplicate: bool,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    requests: Vec<ReceivedRequest>,
    rows: Vec<Map<String, Value>>,
    accepted_tokens: HashSet<String>,
    /// Answers for the next requests, in order, before anything else
    /// (`None`: handle that request normally).
    next_replies: VecDeque<Option<Reply>>,
    /// The answer to every request once `next_replies` is used up.
    always: Option<Reply>,
    /// The answer to any request whose rows hold this text, before the
    /// rest: a payload the endpoint chokes on.
    choke_on: Option<(String, Reply)>,
}

pub struct HttpTestServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl HttpTestServer {
    pub async fn start() -> HttpTestServer {
        HttpTestServer::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> HttpTestServer {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|err| panic!("bind the test HTTP server on {addr}: {err}"));
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(receive)
            .layer(DefaultBodyLimit::disable())
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        HttpTestServer { addr, inner, task }
    }

    /// `http://127.0.0.1:PORT` + `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// The next `times` requests get `status` (and a `Retry-After`).
    pub fn fail_next(&self, times: usize, status: u16, retry_after_secs: Option<u64>) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..times {
            inner.next_replies.push_back(Some(Reply {
                status,
                retry_after_secs,
                body: format!("scripted failure {status}"),
            }));
        }
    }

    /// The next `times` requests are handled normally, before what
    /// `fail_next` scripts after this call.
    pub fn pass_next(&self, times: usize) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..times {
            inner.next_replies.push_back(None);
        }
    }

    /// Every request from now on gets `status` with `body`.
    pub fn fail_always(&self, status: u16, body: &str) {
        self.inner.lock().unwrap().always = Some(Reply {
            status,
            retry_after_secs: None,
            body: body.to_owned(),
        });
    }

    /// Every request whose rows hold `text` (as JSON) gets `status`, while
    /// the others are handled as scripted.
    pub fn choke_on(&self, text: &str, status: u16) {
        self.inner.lock().unwrap().choke_on = Some((
            text.to_owned(),
            Reply {
                status,
                retry_after_secs: None,
                body: format!("choked on the payload: {status}"),
            },
        ));
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Rows accepted (deduplicated by token), as JSON objects, in arrival order.
    pub fn rows(&self) -> Vec<Map<String, Value>> {
        self.inner.lock().unwrap().rows.clone()
    }

    pub fn row_count(&self) -> usize {
        self.inner.lock().unwrap().rows.len()
    }
}

impl Drop for HttpTestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = token_of(&uri, &headers);
    let decoded = decode_body(&headers, &body);
    let mut inner = inner.lock().unwrap();
    let choked = match (&inner.choke_on, &decoded) {
        (Some((text, reply)), Ok((_, rows)))
            if serde_json::to_string(rows).is_ok_and(|json| json.contains(text.as_str())) =>
        {
            Some(reply.clone())
        }
        _ => None,
    };
    let scripted = match choked {
        Some(reply) => Some(reply),
        None => match inner.next_replies.pop_front() {
            Some(next) => next,
            None => inner.always.clone(),
        },
    };
    let mut request = ReceivedRequest {
        uri: uri.to_string(),
        headers: headers.clone(),
        token: token.clone(),
        decoded_bytes: 0,
        rows: 0,
        status: 200,
        duplicate: false,
    };
    if let Some(reply) = scripted {
        request.status = reply.status;
        inner.requests.push(request);
        let mut response_headers = HeaderMap::new();
        if let Some(secs) = reply.retry_after_secs {
            response_headers.insert("retry-after", secs.to_string().parse().unwrap());
        }
        return (
            StatusCode::from_u16(reply.status).unwrap(),
            response_headers,
            reply.body,
        )
            .into_response();
    }
    let (decoded_bytes, rows) = match decoded {
        Ok(decoded) => decoded,
        Err(problem) => {
            // A sink bug, not a scripted failure: make the test fail loudly.
            request.status = 422;
            inner.requests.push(request);
            return (StatusCode::UNPROCESSABLE_ENTITY, problem).into_response();
        }
    };
    request.decoded_bytes = decoded_bytes;
    request.rows = rows.len();
    // Like ClickHouse's insert_deduplication_token: a token seen before is
    // acknowledged without inserting again.
    request.duplicate = match &token {
        Some(token) => !inner.accepted_tokens.insert(token.clone()),
        None => false,
    };
    if !request.duplicate {
        inner.rows.extend(rows);
    }
    inner.requests.push(request);
    (StatusCode::OK, "Ok.").into_response()
}

fn token_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let from_query = uri.query().and_then(|query| {
        query.split('&').find_map(|pair| {
            pair.strip_prefix(&format!("{TOKEN_QUERY_PARAM}="))
                .map(str::to_owned)
        })
    });
    from_query.or_else(|| {
        headers
            .get(TOKEN_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    })
}

/// (decoded size, rows) of a body, by its Content-Encoding and Content-Type.
fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(usize, Vec<Map<String, Value>>), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let data = if header("content-encoding") == "gzip" {
        let mut data = Vec::new();
        flate2::read::MultiGzDecoder::new(body)
            .read_to_end(&mut data)
            .map_err(|err| format!("gunzip: {err}"))?;
        data
    } else {
        body.to_vec()
    };
    let rows = match header("content-type").as_str() {
        "application/vnd.apache.arrow.stream" => arrow_rows(&data)?,
        "application/x-ndjson" => ndjson_rows(&data)?,
        other => return Err(format!("unexpected content type {other:?}")),
    };
    Ok((data.len(), rows))
}

fn arrow_rows(data: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    let reader = arrow::ipc::reader::StreamReader::try_new(data, None)
        .map_err(|err| format!("Arrow IPC stream: {err}"))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|err| format!("Arrow IPC batch: {err}"))?;
        let mut json = Vec::new();
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
        writer.write(&batch).map_err(|err| err.to_string())?;
        writer.finish().map_err(|err| err.to_string())?;
        rows.extend(ndjson_rows(&json)?);
    }
    Ok(rows)
}

fn ndjson_rows(data: &[u8]) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::str::from_utf8(data).map_err(|err| format!("NDJSON is not UTF-8: {err}"))?;
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|err| format!("NDJSON line {line:?}: {err}"))
        })
        .collect()
}
