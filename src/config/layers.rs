//! The config file and the `S3_INGEST__*` environment, layered with figment
//! and deserialized into [`Config`] with every value typed by its field.
//!
//! Two figment providers of our own, rather than figment's `Toml` and `Env`:
//!
//! - The file is parsed with the `toml` crate the project already uses
//!   (figment's `toml` feature brings a second major version of it).
//! - Environment values stay the exact strings that were set. figment's
//!   `Env` parses each value on its own (`012345678901` becomes the number
//!   12345678901, `true` a bool, `[a]` an array) before the field it lands
//!   in is known, and a leading zero cannot be recovered afterwards. Here a
//!   value is read as what its field asks for: a number for a numeric
//!   field, `true`/`false` for a bool, a list for an array, and the text
//!   untouched for a string. `Env` also reads only the process environment,
//!   while [`Config::load`] takes the variables as an argument.
//!
//! Routes are an array in the file but addressed by name in the
//! environment, so both layers hold them as a table keyed by
//! [`route_key`]; the array is rebuilt after merging, in the order the file
//! gives or `route_order` sets.

use std::collections::BTreeSet;

use figment::value::{Dict, Map, Num, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};

use super::{Config, ConfigError, ConfigSource, ENV_PREFIX, invalid};

/// The top-level key that gives the routes' match order by name.
const ROUTE_ORDER: &str = "route_order";

/// The name of the environment layer's figment metadata: values tagged
/// with it are raw strings, typed only when deserialized.
const ENV_LAYER: &str = "S3_INGEST__ environment variables";

/// How a route name appears in environment variable names: lowercased,
/// `-` as `_` (a variable name cannot hold `-`). Names that differ only
/// in case, `-` or `_` are therefore one route to the environment, and the
/// file may not have two of them.
fn route_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// Reads the layers, merges them, orders the routes and deserializes and
/// validates the result. `file` names the layer in messages.
pub(super) fn load(
    file: Option<&ConfigSource>,
    table: toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let file = FileLayer::new(file, table)?;
    let env = EnvLayer::new(env, &file.dict)?;
    let file_order = file.route_order.clone();
    let figment = Figment::from(file).merge(env);
    let merged = figment
        .find_value("")
        .map_err(|err| invalid("<root>", err.to_string()))?;
    let Value::Dict(_, mut root) = merged else {
        unreachable!("figment merges dictionaries")
    };
    order_routes(&mut root, &file_order, &figment)?;
    let origins = Origins {
        root: Value::Dict(Tag::Default, root),
        figment: &figment,
    };
    let config = origins.deserialize()?;
    config.validate().map_err(|err| origins.annotate(err))?;
    Ok(config)
}

/// The config file as a figment layer, routes keyed by [`route_key`].
struct FileLayer {
    dict: Dict,
    /// Route keys in the file's order.
    route_order: Vec<String>,
    metadata: Metadata,
}

impl FileLayer {
    fn new(source: Option<&ConfigSource>, table: toml::Table) -> Result<FileLayer, ConfigError> {
        let metadata = match source {
            Some(ConfigSource::File(path)) => Metadata::from(
                format!("config file {}", path.display()),
                Source::File(path.to_owned()),
            ),
            Some(other) => Metadata::named(other.to_string()),
            None => Metadata::named("config"),
        };
        let Value::Dict(_, mut dict) =
            Value::serialize(&table).map_err(|err| invalid("<root>", err.to_string()))?
        else {
            unreachable!("a TOML table serializes as a dictionary")
        };
        let mut route_order: Vec<String> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        if let Some(routes) = dict.remove("routes") {
            let Value::Array(_, items) = routes else {
                return Err(invalid(
                    "routes",
                    "must be an array of tables ([[routes]] entries)",
                ));
            };
            let mut by_key = Dict::new();
            for (index, item) in items.into_iter().enumerate() {
                let name = match &item {
                    Value::Dict(_, route) => match route.get("name") {
                        Some(Value::String(_, name)) => name.clone(),
                        Some(_) => {
                            return Err(invalid(
                                format!("routes[{index}].name"),
                                "must be a string",
                            ));
                        }
                        None => {
                            return Err(invalid(
                                format!("routes[{index}].name"),
                                "missing: every route needs a name",
                            ));
                        }
                    },
                    _ => return Err(invalid(format!("routes[{index}]"), "must be a table")),
                };
                let key = route_key(&name);
                if let Some(earlier) = route_order.iter().position(|k| *k == key) {
                    let other = &names[earlier];
                    let message = if *other == name {
                        format!("route name `{name}` is used twice")
                    } else {
                        format!(
                            "route name `{name}` and `{other}` (routes[{earlier}]) are one route \
                             to the environment ({ENV_PREFIX}ROUTES__{}__…): names must differ in \
                             more than case, `-` and `_`",
                            key.to_ascii_uppercase()
                        )
                    };
                    return Err(invalid(format!("routes[{index}].name"), message));
                }
                route_order.push(key.clone());
                names.push(name);
                by_key.insert(key, item);
            }
            dict.insert("routes".into(), Value::Dict(Tag::Default, by_key));
        }
        Ok(FileLayer {
            dict,
            route_order,
            metadata,
        })
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// One `S3_INGEST__…` variable: where it lands and its text.
struct EnvEntry {
    var: String,
    path: Vec<String>,
    raw: String,
}

/// The `S3_INGEST__*` variables as a figment layer of raw strings.
struct EnvLayer {
    entries: Vec<EnvEntry>,
}

impl EnvLayer {
    /// Resolves each variable's key path against the file (`file`), so that
    /// a key matches the file's spelling whatever its case, and `-` and `_`
    /// are one (`SINKS__RAW_LAKE` sets `[sinks.Raw-Lake]`).
    fn new(
        env: impl IntoIterator<Item = (String, String)>,
        file: &Dict,
    ) -> Result<EnvLayer, ConfigError> {
        let mut entries = Vec::new();
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let env_error = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            if segments.iter().any(String::is_empty) {
                return Err(env_error("has an empty key segment".into()));
            }
            let path = resolve_path(&segments, file).map_err(env_error)?;
            if let [routes, key, field] = path.as_slice()
                && routes == "routes"
                && field == "name"
                && route_key(&raw) != *key
            {
                return Err(env_error(format!(
                    "`{raw}` is not the route this variable addresses (`{key}`): a route's \
                     name is the variable's name segment, `-` written as `_`"
                )));
            }
            entries.push(EnvEntry { var, path, raw });
        }
        // Two variables for one key, or one inside the other's value, would
        // leave the result to the order of the environment.
        entries.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.var.cmp(&b.var)));
        for pair in entries.windows(2) {
            if pair[1].path.starts_with(&pair[0].path) {
                return Err(ConfigError::Env {
                    var: pair[1].var.clone(),
                    message: format!(
                        "sets `{}`, which {} sets too",
                        pair[1].path.join("."),
                        pair[0].var
                    ),
                });
            }
        }
        Ok(EnvLayer { entries })
    }
}

/// Maps a variable's lowercased segments to the key path it sets.
fn resolve_path(segments: &[String], file: &Dict) -> Result<Vec<String>, String> {
    let mut path: Vec<String> = Vec::with_capacity(segments.len());
    let mut node = Some(file);
    for (position, segment) in segments.iter().enumerate() {
        let key = if position == 1 && path[0] == "routes" {
            if segment.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`{segment}` is an array index: routes are addressed by name, as in \
                     {ENV_PREFIX}ROUTES__ORDERS__KEY_GLOB for the route named `orders` (order: \
                     {ENV_PREFIX}ROUTE_ORDER)"
                ));
            }
            route_key(segment)
        } else {
            match node {
                Some(dict) => matching_key(dict, segment)?,
                None => segment.clone(),
            }
        };
        node = node
            .and_then(|dict| dict.get(&key))
            .and_then(Value::as_dict);
        path.push(key);
    }
    if path[0] == "routes" && path.len() < 3 {
        return Err(format!(
            "sets a whole route or all routes: set one key of a route at a time, as in \
             {ENV_PREFIX}ROUTES__ORDERS__KEY_GLOB"
        ));
    }
    Ok(path)
}

/// The key of `dict` that `segment` names: the same but for case and `-`
/// versus `_`; `segment` itself when there is none.
fn matching_key(dict: &Dict, segment: &str) -> Result<String, String> {
    let wanted = route_key(segment);
    let found: Vec<&String> = dict.keys().filter(|k| route_key(k) == wanted).collect();
    match found.as_slice() {
        [] => Ok(segment.to_owned()),
        [one] => Ok((*one).clone()),
        several => Err(format!(
            "`{segment}` matches the keys {} alike: rename one in the file",
            several
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from(ENV_LAYER, Source::Custom("environment".into()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for entry in &self.entries {
            let (last, parents) = entry.path.split_last().expect("non-empty path");
            let mut dict = &mut root;
            for key in parents {
                let child = dict
                    .entry(key.clone())
                    .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
                let Value::Dict(_, child) = child else {
                    unreachable!("EnvLayer::new refuses a key inside another variable's value")
                };
                dict = child;
            }
            dict.insert(last.clone(), Value::String(Tag::Default, entry.raw.clone()));
        }
        Ok(Profile::Default.collect(root))
    }
}

fn from_env(figment: &Figment, tag: Tag) -> bool {
    figment
        .get_metadata(tag)
        .is_some_and(|metadata| metadata.name == ENV_LAYER)
}

/// Turns the merged `routes` table back into the array [`Config`] has, in
/// match order: `route_order` when set (it must name every route once),
/// else the file's order. A route only the environment defines has no
/// place in the file's order, so it needs `route_order`, unless it is the
/// only route.
fn order_routes(
    root: &mut Dict,
    file_order: &[String],
    figment: &Figment,
) -> Result<(), ConfigError> {
    let order_value = root.remove(ROUTE_ORDER);
    let Some(routes) = root.remove("routes") else {
        return match order_value {
            Some(_) => Err(invalid(ROUTE_ORDER, "is set, but there are no routes")),
            None => Ok(()),
        };
    };
    let Value::Dict(tag, mut routes) = routes else {
        unreachable!("both layers hold routes as a table")
    };
    let order_error = |message: String| {
        let context = match &order_value {
            Some(value) if from_env(figment, value.tag()) => {
                format!(" (set by {ENV_PREFIX}ROUTE_ORDER)")
            }
            _ => String::new(),
        };
        ConfigError::Invalid {
            key: ROUTE_ORDER.into(),
            context,
            message,
        }
    };
    let order: Vec<String> = match &order_value {
        Some(value) => {
            let names: Vec<String> = serde::Deserialize::deserialize(ValueDe { value, figment })
                .map_err(|err| order_error(err.to_string()))?;
            let mut seen = BTreeSet::new();
            let mut order = Vec::with_capacity(names.len());
            for name in &names {
                let key = route_key(name.trim());
                if !routes.contains_key(&key) {
                    return Err(order_error(format!(
                        "names `{name}`, which is no route (routes: {})",
                        routes.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                if !seen.insert(key.clone()) {
                    return Err(order_error(format!("lists `{name}` twice")));
                }
                order.push(key);
            }
            if let Some(missing) = routes.keys().find(|key| !seen.contains(*key)) {
                return Err(order_error(format!(
                    "does not list route `{missing}`: list every route, in match order"
                )));
            }
            order
        }
        None => {
            let env_only: Vec<&String> = routes
                .keys()
                .filter(|key| !file_order.contains(key))
                .collect();
            match (file_order.is_empty(), env_only.as_slice()) {
                (_, []) => file_order.to_vec(),
                (true, [only]) => vec![(*only).clone()],
                (_, env_only) => {
                    let all: Vec<&str> = file_order
                        .iter()
                        .map(String::as_str)
                        .chain(env_only.iter().map(|key| key.as_str()))
                        .collect();
                    return Err(order_error(format!(
                        "missing: route(s) {} are defined only by the environment, which \
                         gives no order; set {ENV_PREFIX}ROUTE_ORDER to every route in match \
                         order (first match wins), e.g. `{}`",
                        env_only
                            .iter()
                            .map(|key| format!("`{key}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        all.join(",")
                    )));
                }
            }
        }
    };
    let mut array = Vec::with_capacity(order.len());
    for key in order {
        let mut route = routes.remove(&key).expect("ordered keys are route keys");
        // A route the environment creates is named by its variables.
        if let Value::Dict(_, fields) = &mut route {
            fields
                .entry("name".into())
                .or_insert_with(|| Value::String(Tag::Default, key.clone()));
        }
        array.push(route);
    }
    root.insert("routes".into(), Value::Array(tag, array));
    Ok(())
}

/// The merged tree, and where each of its values came from.
struct Origins<'a> {
    root: Value,
    figment: &'a Figment,
}

impl Origins<'_> {
    fn deserialize(&self) -> Result<Config, ConfigError> {
        let de = ValueDe {
            value: &self.root,
            figment: self.figment,
        };
        serde_path_to_error::deserialize(de).map_err(|err| {
            let key = err.path().to_string();
            let key = if key == "." { "<root>".into() } else { key };
            let message = err.into_inner().to_string();
            let context = self.context(&key, &message);
            ConfigError::Invalid {
                key,
                context,
                message,
            }
        })
    }

    /// Adds the route and the variable behind a key to a rejection.
    fn annotate(&self, err: ConfigError) -> ConfigError {
        match err {
            ConfigError::Invalid {
                key,
                context,
                message,
            } if context.is_empty() => ConfigError::Invalid {
                context: self.context(&key, &message),
                key,
                message,
            },
            other => other,
        }
    }

    /// ` (route `orders`, set by S3_INGEST__ROUTES__ORDERS__KEY_GLOB)`, or
    /// the parts of it that apply, for a key like `routes[0].key_glob`.
    fn context(&self, key: &str, message: &str) -> String {
        let mut segments: Vec<&str> = Vec::new();
        for part in key.split('.') {
            // `routes[0]` → `routes`, `0`
            let mut pieces = part.split('[');
            segments.extend(pieces.next());
            segments.extend(pieces.map(|index| index.trim_end_matches(']')));
        }
        // serde reports an unknown field at its table's key.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            segments.push(field);
        }
        let mut parts = Vec::new();
        let mut var = Vec::new();
        let mut value = &self.root;
        for (position, segment) in segments.iter().enumerate() {
            let next = match value {
                Value::Dict(_, dict) => dict.get(*segment),
                Value::Array(_, items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            let Some(next) = next else { break };
            if position == 1 && segments[0] == "routes" {
                let name = next
                    .as_dict()
                    .and_then(|route| route.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                parts.push(format!("route `{name}`"));
                var.push(route_key(name).to_ascii_uppercase());
            } else {
                var.push(segment.to_ascii_uppercase().replace('-', "_"));
            }
            value = next;
            if !matches!(value, Value::Dict(..) | Value::Array(..)) {
                if from_env(self.figment, value.tag()) {
                    parts.push(format!("set by {ENV_PREFIX}{}", var.join("__")));
                }
                break;
            }
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// Deserializes a merged value. A string from the environment is read as
/// its field asks: parsed for a number or a bool, a list (`a,b` or a TOML
/// array `["a", "b"]`) for an array, a TOML inline table (`{ k = "v" }`)
/// for a table, and as it is for a string. Values from the file keep the
/// types TOML gave them.
#[derive(Clone, Copy)]
struct ValueDe<'a> {
    value: &'a Value,
    figment: &'a Figment,
}

type DeError = de::value::Error;

impl<'a> ValueDe<'a> {
    /// The text of a value that came from the environment.
    fn raw(&self) -> Option<&'a str> {
        match self.value {
            Value::String(tag, text) if from_env(self.figment, *tag) => Some(text),
            _ => None,
        }
    }
}

/// Parses `text` as a TOML value (an array or an inline table) and hands it
/// to `visitor` through the `toml` crate's deserializer.
fn visit_toml<'de, V: Visitor<'de>>(text: &str, visitor: V) -> Result<V::Value, DeError> {
    let value = format!("value = {text}")
        .parse::<toml::Table>()
        .map_err(|err| {
            de::Error::custom(format!(
                "`{text}` is not a TOML array or inline table: {}",
                err.message()
            ))
        })?
        .remove("value")
        .expect("parsed `value = …`");
    serde::Deserializer::deserialize_any(value, visitor).map_err(de::Error::custom)
}

fn visit_num<'de, V: Visitor<'de>>(num: Num, visitor: V) -> Result<V::Value, DeError> {
    match num {
        Num::U8(n) => visitor.visit_u8(n),
        Num::U16(n) => visitor.visit_u16(n),
        Num::U32(n) => visitor.visit_u32(n),
        Num::U64(n) => visitor.visit_u64(n),
        Num::U128(n) => visitor.visit_u128(n),
        Num::USize(n) => visitor.visit_u64(n as u64),
        Num::I8(n) => visitor.visit_i8(n),
        Num::I16(n) => visitor.visit_i16(n),
        Num::I32(n) => visitor.visit_i32(n),
        Num::I64(n) => visitor.visit_i64(n),
        Num::I128(n) => visitor.visit_i128(n),
        Num::ISize(n) => visitor.visit_i64(n as i64),
        Num::F32(n) => visitor.visit_f32(n),
        Num::F64(n) => visitor.visit_f64(n),
    }
}

macro_rules! deserialize_integer {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.raw() {
                Some(text) => match text.trim().parse::<i128>() {
                    Ok(n) if n >= 0 => match u64::try_from(n) {
                        Ok(n) => visitor.visit_u64(n),
                        Err(_) => visitor.visit_u128(n as u128),
                    },
                    Ok(n) => match i64::try_from(n) {
                        Ok(n) => visitor.visit_i64(n),
                        Err(_) => visitor.visit_i128(n),
                    },
                    Err(_) => Err(de::Error::invalid_type(Unexpected::Str(text), &visitor)),
                },
                None => self.deserialize_any(visitor),
            }
        }
    )*};
}

macro_rules! deserialize_text {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            match self.raw() {
                Some(text) => visitor.visit_str(text),
                None => self.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::String(_, text) => visitor.visit_str(text),
            Value::Char(_, c) => visitor.visit_char(*c),
            Value::Bool(_, b) => visitor.visit_bool(*b),
            Value::Num(_, num) => visit_num(*num, visitor),
            Value::Empty(..) => visitor.visit_unit(),
            Value::Dict(_, dict) => visitor.visit_map(MapDe::new(dict, self.figment)),
            Value::Array(_, items) => visitor.visit_seq(SeqDe {
                items: items.iter(),
                figment: self.figment,
            }),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.raw() {
            Some(text) => match text.trim() {
                "true" => visitor.visit_bool(true),
                "false" => visitor.visit_bool(false),
                _ => Err(de::Error::invalid_type(Unexpected::Str(text), &visitor)),
            },
            None => self.deserialize_any(visitor),
        }
    }

    deserialize_integer!(
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.raw() {
            Some(text) => match text.trim().parse::<f64>() {
                Ok(n) => visitor.visit_f64(n),
                Err(_) => Err(de::Error::invalid_type(Unexpected::Str(text), &visitor)),
            },
            None => self.deserialize_any(visitor),
        }
    }

    deserialize_text!(
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_identifier
    );

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Empty(..) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Some(text) = self.raw() else {
            return self.deserialize_any(visitor);
        };
        if text.trim_start().starts_with('[') {
            return visit_toml(text, visitor);
        }
        // `a, b`: each item is again a string from the environment, typed
        // by the array's element type.
        let items: Vec<Value> = if text.trim().is_empty() {
            Vec::new()
        } else {
            text.split(',')
                .map(|item| Value::String(self.value.tag(), item.trim().to_owned()))
                .collect()
        };
        visitor.visit_seq(SeqDe {
            items: items.iter(),
            figment: self.figment,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.raw() {
            Some(text) if text.trim_start().starts_with('{') => visit_toml(text, visitor),
            Some(text) => Err(de::Error::invalid_type(Unexpected::Str(text), &visitor)),
            None => self.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.value {
            Value::String(_, text) => visitor.visit_enum(text.as_str().into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe<'a> {
    items: std::slice::Iter<'a, Value>,
    figment: &'a Figment,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.items
            .next()
            .map(|value| {
                seed.deserialize(ValueDe {
                    value,
                    figment: self.figment,
                })
            })
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// A table's entries, `type` first: a sink's `type` decides which fields
/// the rest of its table has (see `SinkConfig`'s `Deserialize`).
struct MapDe<'a> {
    entries: std::vec::IntoIter<(&'a String, &'a Value)>,
    value: Option<&'a Value>,
    figment: &'a Figment,
}

impl<'a> MapDe<'a> {
    fn new(dict: &'a Dict, figment: &'a Figment) -> Self {
        let mut entries: Vec<(&String, &Value)> = dict.iter().collect();
        entries.sort_by_key(|(key, _)| key.as_str() != "type");
        MapDe {
            entries: entries.into_iter(),
            value: None,
            figment,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key.as_str().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        let value = self
            .value
            .take()
            .expect("next_key_seed before next_value_seed");
        seed.deserialize(ValueDe {
            value,
            figment: self.figment,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}
