//! Routing: the first route whose bucket and key glob match an object
//! decides how it is decoded and where it lands, as one [`ObjectPlan`].

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use globset::{GlobBuilder, GlobMatcher};

use crate::config::{CsvOptions, FileFormat, GroupConfig, RouteConfig, RouteLimits};
use crate::contract::Contract;

/// What one object's pipeline does, decided once when it is routed and
/// handed to the pipeline as one value. Only the compression is left to
/// the pipeline: it is declared by the GET's `Content-Encoding` (else the
/// key's suffix) and checked against the bytes' magic.
#[derive(Debug, Clone)]
pub struct ObjectPlan {
    /// The route's name, for lineage, logs and metrics.
    pub route: String,
    pub format: PlannedFormat,
    /// The route's explicit schema, if it has one.
    pub schema: Option<SchemaRef>,
    pub batch_rows: usize,
    pub limits: RouteLimits,
    /// Every sink the object lands in, committed in this order.
    pub sinks: Vec<String>,
    /// Small objects join a group of the route (`group.rs`) when set.
    pub group: Option<GroupConfig>,
    /// The route's data contract: each batch passes through it between
    /// the decoder and the sinks (`contract/`).
    pub contract: Option<Arc<Contract>>,
}

/// The object's format, with what decoding it needs.
#[derive(Debug, Clone)]
pub enum PlannedFormat {
    /// CSV; the options carry the delimiter already decided (the route's,
    /// else a tab for `.tsv` keys and a comma for the rest).
    Csv(CsvOptions),
    Parquet,
}

impl PlannedFormat {
    pub fn file_format(&self) -> FileFormat {
        match self {
            PlannedFormat::Csv(_) => FileFormat::Csv,
            PlannedFormat::Parquet => FileFormat::Parquet,
        }
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub bucket: Option<String>,
    pub key_glob: String,
    matcher: GlobMatcher,
    pub format: FileFormat,
    /// Every object lands in all of these, committed in this order.
    pub sinks: Vec<String>,
    pub csv: CsvOptions,
    /// The explicit schema, if the route has one.
    pub schema: Option<SchemaRef>,
    pub batch_rows: usize,
    pub limits: RouteLimits,
    pub group: Option<GroupConfig>,
    pub contract: Option<Arc<Contract>>,
}

impl Route {
    /// The plan for an object at `key`; `Err` says why no format fits (the
    /// object is then an `unsupported_format`).
    pub fn plan(&self, key: &str) -> Result<ObjectPlan, String> {
        let format = match resolve_format(self.format, key) {
            Some(FileFormat::Csv) => {
                let mut options = self.csv.clone();
                options.delimiter = Some(resolve_delimiter(options.delimiter, key));
                PlannedFormat::Csv(options)
            }
            Some(FileFormat::Parquet) => PlannedFormat::Parquet,
            Some(FileFormat::Auto) | None => {
                return Err(format!(
                    "route `{}` has format auto and the key's extension is not .csv, .tsv, .txt, .parquet or .pq (optionally .gz/.zst)",
                    self.name
                ));
            }
        };
        Ok(ObjectPlan {
            route: self.name.clone(),
            format,
            schema: self.schema.clone(),
            batch_rows: self.batch_rows,
            limits: self.limits.clone(),
            sinks: self.sinks.clone(),
            group: self.group,
            contract: self.contract.clone(),
        })
    }

    pub fn from_config(config: &RouteConfig) -> Result<Route, String> {
        // `literal_separator`: `*` must not cross `/`, as users expect from
        // shell globs; `**` still spans directories.
        let matcher = GlobBuilder::new(&config.key_glob)
            .literal_separator(true)
            .build()
            .map_err(|err| err.to_string())?
            .compile_matcher();
        let schema = config
            .schema
            .as_deref()
            .map(crate::schema::arrow_schema)
            .transpose()?;
        let contract = config
            .contract
            .as_ref()
            .map(|contract| {
                Contract::compile(&config.name, schema.as_ref(), contract)
                    .map(Arc::new)
                    .map_err(|err| err.message)
            })
            .transpose()?;
        Ok(Route {
            name: config.name.clone(),
            bucket: config.bucket.clone(),
            key_glob: config.key_glob.clone(),
            matcher,
            format: config.format,
            sinks: config.sink_names(),
            csv: config.csv.clone(),
            schema,
            batch_rows: config.batch_rows.get(),
            limits: config.limits.clone(),
            group: config.group,
            contract,
        })
    }

    pub fn matches(&self, bucket: &str, key: &str) -> bool {
        self.bucket.as_deref().is_none_or(|b| b == bucket) && self.matcher.is_match(key)
    }
}

/// The ordered list of routes.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(configs: &[RouteConfig]) -> Result<Router, String> {
        let routes = configs
            .iter()
            .map(|c| Route::from_config(c).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Router { routes })
    }

    /// The first matching route, or `None` for a key no route wants.
    pub fn route(&self, bucket: &str, key: &str) -> Option<Arc<Route>> {
        self.routes.iter().find(|r| r.matches(bucket, key)).cloned()
    }

    /// Whether any route accepts objects from `bucket` (a route without a
    /// bucket accepts every bucket).
    pub fn bucket_allowed(&self, bucket: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.bucket.as_deref().is_none_or(|b| b == bucket))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

/// The concrete format of one object: the route's, or for `auto` the one
/// its key's extension names once a compression suffix is stripped.
pub fn resolve_format(route_format: FileFormat, key: &str) -> Option<FileFormat> {
    if route_format != FileFormat::Auto {
        return Some(route_format);
    }
    let stem = key_stem(key);
    if [".csv", ".tsv", ".txt"]
        .iter()
        .any(|ext| stem.ends_with(ext))
    {
        Some(FileFormat::Csv)
    } else if [".parquet", ".pq"].iter().any(|ext| stem.ends_with(ext)) {
        Some(FileFormat::Parquet)
    } else {
        None
    }
}

/// The CSV field separator for `key`: the route's, else a tab for `.tsv`
/// keys and a comma for the rest.
pub fn resolve_delimiter(route_delimiter: Option<char>, key: &str) -> char {
    route_delimiter.unwrap_or_else(|| {
        if key_stem(key).ends_with(".tsv") {
            '\t'
        } else {
            ','
        }
    })
}

/// The key in lower case without a compression suffix.
fn key_stem(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    [".gz", ".gzip", ".zst", ".zstd"]
        .iter()
        .find_map(|suffix| lower.strip_suffix(suffix))
        .map(str::to_owned)
        .unwrap_or(lower)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsv_keys_default_to_tabs_unless_the_route_says_otherwise() {
        assert_eq!(super::resolve_delimiter(None, "a/b.tsv"), '\t');
        assert_eq!(super::resolve_delimiter(None, "a/b.TSV.gz"), '\t');
        assert_eq!(super::resolve_delimiter(None, "a/b.csv"), ',');
        assert_eq!(super::resolve_delimiter(None, "a/tsv"), ',');
        assert_eq!(super::resolve_delimiter(Some(';'), "a/b.tsv"), ';');
    }

    use super::*;

    fn route(name: &str, bucket: Option<&str>, glob: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            bucket: bucket.map(Into::into),
            key_glob: glob.into(),
            format: FileFormat::Auto,
            sink: Some("lake".into()),
            sinks: Vec::new(),
            csv: CsvOptions::default(),
            schema: None,
            batch_rows: std::num::NonZeroUsize::new(10).unwrap(),
            limits: Default::default(),
            group: None,
            contract: None,
        }
    }

    #[test]
    fn a_plan_decides_format_delimiter_and_sinks_once() {
        let router = Router::new(&[route("vendor", None, "**")]).unwrap();
        let plan = |key: &str| router.route("b", key).unwrap().plan(key);
        let tsv = plan("in/prices.tsv.gz").unwrap();
        assert_eq!(tsv.route, "vendor");
        assert_eq!(tsv.sinks, ["lake"]);
        match &tsv.format {
            PlannedFormat::Csv(options) => assert_eq!(options.delimiter, Some('\t')),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan("in/orders.parquet").unwrap().format,
            PlannedFormat::Parquet
        ));
        let unknown = plan("in/orders.json").unwrap_err();
        assert!(
            unknown.contains("route `vendor` has format auto"),
            "{unknown}"
        );
    }

    #[test]
    fn first_matching_route_wins() {
        let router = Router::new(&[
            route("orders", Some("vendor"), "orders/**/*.csv"),
            route("vendor-any", Some("vendor"), "**"),
            route("elsewhere", None, "in/*"),
        ])
        .unwrap();
        let name = |bucket: &str, key: &str| router.route(bucket, key).map(|r| r.name.clone());
        assert_eq!(
            name("vendor", "orders/2026/11/a.csv").as_deref(),
            Some("orders")
        );
        assert_eq!(name("vendor", "orders/a.csv").as_deref(), Some("orders"));
        assert_eq!(
            name("vendor", "prices/a.csv").as_deref(),
            Some("vendor-any")
        );
        assert_eq!(name("other", "in/x.csv").as_deref(), Some("elsewhere"));
        // `*` does not cross a slash.
        assert_eq!(name("other", "in/deep/x.csv"), None);
        assert_eq!(name("other", "orders/a.csv"), None);
    }

    #[test]
    fn buckets_are_allowed_by_name_or_by_a_route_without_bucket() {
        let named = Router::new(&[route("a", Some("vendor"), "**")]).unwrap();
        assert!(named.bucket_allowed("vendor"));
        assert!(!named.bucket_allowed("stranger"));
        let open =
            Router::new(&[route("a", Some("vendor"), "**"), route("b", None, "x/*")]).unwrap();
        assert!(open.bucket_allowed("stranger"));
    }

    #[test]
    fn auto_format_follows_the_extension_under_compression() {
        let auto = FileFormat::Auto;
        assert_eq!(resolve_format(auto, "a/b.csv"), Some(FileFormat::Csv));
        assert_eq!(resolve_format(auto, "a/b.CSV.GZ"), Some(FileFormat::Csv));
        assert_eq!(resolve_format(auto, "a/b.tsv.zst"), Some(FileFormat::Csv));
        assert_eq!(
            resolve_format(auto, "a/b.parquet"),
            Some(FileFormat::Parquet)
        );
        assert_eq!(resolve_format(auto, "a/b.json"), None);
        assert_eq!(
            resolve_format(FileFormat::Csv, "a/b.json"),
            Some(FileFormat::Csv)
        );
    }
}
