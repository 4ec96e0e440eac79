//! `http`: batches POSTed as Arrow IPC stream or NDJSON.
//!
//! PLACEHOLDER: being implemented on a branch; not usable yet.

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Lineage, Sink, SinkContext, SinkError, SinkWriter};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {}

impl HttpSinkConfig {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}

pub struct HttpSink {
    name: String,
}

impl HttpSink {
    pub fn new(
        name: &str,
        _config: &HttpSinkConfig,
        _context: &SinkContext,
    ) -> Result<HttpSink, SinkError> {
        Ok(HttpSink {
            name: name.to_owned(),
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
        _lineage: &Lineage,
        _schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        Err(SinkError::permanent("this sink is not implemented yet"))
    }
}
