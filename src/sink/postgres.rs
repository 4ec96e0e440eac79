//! `postgres`: each object version COPYed into a table in one transaction with a ledger row (exactly once).
//!
//! PLACEHOLDER: being implemented on a branch; not usable yet.

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Lineage, Sink, SinkContext, SinkError, SinkWriter};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {}

impl PostgresSinkConfig {
    /// Errors are (field relative to `sinks.NAME.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}

pub struct PostgresSink {
    name: String,
}

impl PostgresSink {
    pub fn new(
        name: &str,
        _config: &PostgresSinkConfig,
        _context: &SinkContext,
    ) -> Result<PostgresSink, SinkError> {
        Ok(PostgresSink {
            name: name.to_owned(),
        })
    }
}

#[async_trait]
impl Sink for PostgresSink {
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
