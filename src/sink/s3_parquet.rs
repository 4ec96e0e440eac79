//! `s3_parquet`: Parquet objects under an S3 prefix, streamed by multipart upload.
//!
//! PLACEHOLDER: being implemented on a branch; not usable yet.

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Lineage, Sink, SinkContext, SinkError, SinkWriter};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3ParquetSinkConfig {}

impl S3ParquetSinkConfig {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}

pub struct S3ParquetSink {
    name: String,
}

impl S3ParquetSink {
    pub fn new(
        name: &str,
        _config: &S3ParquetSinkConfig,
        _context: &SinkContext,
    ) -> Result<S3ParquetSink, SinkError> {
        Ok(S3ParquetSink {
            name: name.to_owned(),
        })
    }
}

#[async_trait]
impl Sink for S3ParquetSink {
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
