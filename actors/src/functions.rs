//! Stream-operation functions: the built-in hierarchical groupings and functions
//! registered from Rust code.
//!
//! A function is keyed: every input has a group key, inputs with the same key meet in
//! the same shard, and the function may keep state per key (written to the changelog
//! through [`StreamFunction::take_changes`], restored with [`StreamFunction::restore`]).
//! A function that cannot take an input says why with a [`FunctionError`]: a rejected
//! input goes to the dead-letter topic, a function that cannot process it now makes its
//! shard restart and read it again.
//!
//! ```
//! use wellspring_actors::functions::FunctionRegistry;
//! use wellspring_protocol::Value;
//!
//! let mut registry = FunctionRegistry::with_builtins();
//! // A stateless function: flags saturated images.
//! registry.register_map("qc/flag-saturated", "image_metrics", "json", |key, record| {
//!     let saturated = matches!(record.get("saturated_fraction"), Some(Value::Float(f)) if *f > 0.01);
//!     Ok(if saturated { vec![(key.to_owned(), record.clone())] } else { vec![] })
//! });
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wellspring_protocol::records::{RecordError, key_of};
use wellspring_protocol::spec::builtins;
use wellspring_protocol::spec::{FunctionCatalog, FunctionSignature};
use wellspring_protocol::{
    ChannelImage, ExperimentId, IncompleteRecord, PlateRecord, SiteRecord, Value, WellRecord,
};

pub use crate::aggregation::RestoreError;
use crate::aggregation::{
    Aggregator, AggregatorConfig, Emitted, ExperimentLevel, Ingested, Layouts, Level, PlateLevel,
    SiteLevel, WellLevel,
};

/// Why a function did not take an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    /// The input is wrong for the function (not the record it takes, not in its
    /// experiment's layout, a repeat with other contents): it goes to the dead-letter
    /// topic with this reason. Reading it again would fail again.
    #[error("{0}")]
    Rejected(String),
    /// The function cannot process the input now (something it needs is unavailable):
    /// a retry can help. The shard restarts from its last commit and reads it again;
    /// if it keeps failing, the restart budgets escalate up the supervision tree.
    #[error("{0}")]
    Unavailable(String),
}

impl FunctionError {
    /// Rejects the input for `reason`.
    pub fn rejected(reason: impl fmt::Display) -> Self {
        FunctionError::Rejected(reason.to_string())
    }

    /// Whether processing the input again can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, FunctionError::Unavailable(_))
    }
}

/// A reason in words rejects the input (what most functions mean by an error).
impl From<String> for FunctionError {
    fn from(reason: String) -> Self {
        FunctionError::Rejected(reason)
    }
}

impl From<&str> for FunctionError {
    fn from(reason: &str) -> Self {
        FunctionError::Rejected(reason.to_owned())
    }
}

/// What a function emits.
#[derive(Debug, Clone, PartialEq)]
pub enum FunctionOutput {
    Emit {
        key: String,
        value: Value,
    },
    Incomplete(IncompleteRecord),
    /// An input found bad after it was accepted (it goes to the dead-letter topic).
    Reject {
        key: String,
        reason: String,
    },
}

/// What a function sees while it runs.
pub struct FunctionContext<'a> {
    pub layouts: &'a dyn Layouts,
    pub now_ms: i64,
    pub out: &'a mut Vec<FunctionOutput>,
    /// Inputs that were repeats (counted, not emitted).
    pub duplicates: u64,
}

/// A keyed stream operation with optional state.
pub trait StreamFunction {
    /// Processes one input of group `key`. An `Err` rejects the input, or (when
    /// [`FunctionError::retryable`]) asks for it again later.
    fn process(
        &mut self,
        key: &str,
        input: &Value,
        ctx: &mut FunctionContext<'_>,
    ) -> Result<(), FunctionError>;
    /// The layout of `experiment` arrived.
    fn layout_arrived(&mut self, _experiment: &ExperimentId, _ctx: &mut FunctionContext<'_>) {}
    /// Called often (timeouts): at the latest when [`StreamFunction::due_ms`] says.
    fn tick(&mut self, _ctx: &mut FunctionContext<'_>) {}
    /// When `tick` has work next (clock milliseconds), if it has any: until then the
    /// stage need not call it.
    fn due_ms(&self) -> Option<i64> {
        None
    }
    /// State changed since the last call: `(state key, encoded state or None to delete)`.
    fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        Vec::new()
    }
    /// Applies one changelog entry while the shard restores. An entry it cannot read is
    /// skipped (with a warning).
    fn restore(&mut self, _key: &str, _entry: Option<&[u8]>) -> Result<(), RestoreError> {
        Ok(())
    }
    /// The restore is complete.
    fn restored(&mut self, _ctx: &mut FunctionContext<'_>) {}
    /// Open aggregates (for metrics).
    fn open_count(&self) -> usize {
        0
    }
}

/// Parameters a node passes to its function.
#[derive(Debug, Clone, Copy, Default)]
pub struct FunctionParams {
    pub incomplete_timeout: Option<Duration>,
}

pub type GroupKeyFn = Arc<dyn Fn(&str, &Value) -> Result<String, FunctionError> + Send + Sync>;
pub type CreateFn = Arc<dyn Fn(&FunctionParams) -> Box<dyn StreamFunction> + Send + Sync>;

/// A function as registered.
#[derive(Clone)]
pub struct FunctionDef {
    pub signature: FunctionSignature,
    /// The group key of an input (from its record key and value): inputs with the same
    /// group key go to the same shard. An `Err` rejects the input where it is routed.
    pub group_key: GroupKeyFn,
    pub create: CreateFn,
}

/// The functions a runtime offers.
#[derive(Clone, Default)]
pub struct FunctionRegistry {
    functions: BTreeMap<String, FunctionDef>,
}

impl FunctionRegistry {
    /// The four hierarchical groupings.
    pub fn with_builtins() -> Self {
        let mut registry = Self::default();
        for (name, signature) in builtins::hierarchy() {
            let def = match name {
                builtins::IMAGES_SITE_GROUPING => grouping::<SiteLevel>(
                    signature,
                    key_of::site,
                    channel_decoder,
                    SiteRecord::to_value,
                ),
                builtins::SITES_WELL_GROUPING => grouping::<WellLevel>(
                    signature,
                    key_of::well,
                    || Box::new(|v| SiteRecord::from_value(v).map_err(FunctionError::rejected)),
                    WellRecord::to_value,
                ),
                builtins::WELLS_PLATE_GROUPING => grouping::<PlateLevel>(
                    signature,
                    key_of::plate,
                    || Box::new(|v| WellRecord::from_value(v).map_err(FunctionError::rejected)),
                    PlateRecord::to_value,
                ),
                builtins::PLATES_EXPERIMENT_GROUPING => grouping::<ExperimentLevel>(
                    signature,
                    key_of::experiment,
                    || Box::new(|v| PlateRecord::from_value(v).map_err(FunctionError::rejected)),
                    |r| r.to_value(),
                ),
                _ => continue,
            };
            registry.register(name, def);
        }
        registry
    }

    pub fn register(&mut self, name: &str, def: FunctionDef) {
        self.functions.insert(name.to_owned(), def);
    }

    /// Registers a stateless function: each input becomes zero or more `(key, value)`
    /// outputs. Inputs are grouped by their record key.
    pub fn register_map<F>(&mut self, name: &str, input: &str, output: &str, f: F)
    where
        F: Fn(&str, &Value) -> Result<Vec<(String, Value)>, FunctionError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.register(
            name,
            FunctionDef {
                signature: FunctionSignature {
                    input: input.to_owned(),
                    output: output.to_owned(),
                    table: None,
                    description: format!("{name} (registered from Rust)"),
                },
                group_key: Arc::new(|key, _| Ok(key.to_owned())),
                create: Arc::new(move |_| Box::new(MapFunction(f.clone()))),
            },
        );
    }

    pub fn get(&self, name: &str) -> Option<&FunctionDef> {
        self.functions.get(name)
    }
}

impl FunctionCatalog for FunctionRegistry {
    fn signature(&self, name: &str) -> Option<FunctionSignature> {
        self.functions.get(name).map(|d| d.signature.clone())
    }

    fn names(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }
}

type MapFn = dyn Fn(&str, &Value) -> Result<Vec<(String, Value)>, FunctionError> + Send + Sync;

struct MapFunction(Arc<MapFn>);

impl StreamFunction for MapFunction {
    fn process(
        &mut self,
        key: &str,
        input: &Value,
        ctx: &mut FunctionContext<'_>,
    ) -> Result<(), FunctionError> {
        for (key, value) in (self.0)(key, input)? {
            ctx.out.push(FunctionOutput::Emit { key, value });
        }
        Ok(())
    }
}

/// Decodes a shard's channel images, sharing their provenance strings.
fn channel_decoder() -> Decoder<ChannelImage> {
    let mut previous = None;
    Box::new(move |value| {
        ChannelImage::from_value_sharing(value, &mut previous).map_err(FunctionError::rejected)
    })
}

/// A grouping's decoder of its inputs (it may keep state, e.g. to share strings): an
/// input that is not the record the grouping takes is rejected.
type Decoder<I> = Box<dyn FnMut(&Value) -> Result<I, FunctionError>>;

/// A built-in grouping: decodes its input, aggregates it at level `L`, encodes what
/// completes.
fn grouping<L: Level>(
    signature: FunctionSignature,
    key_of: fn(&Value) -> Result<L::Key, RecordError>,
    decoder: fn() -> Decoder<L::Input>,
    encode: fn(&L::Output) -> Value,
) -> FunctionDef {
    FunctionDef {
        signature,
        group_key: Arc::new(move |_, value| {
            key_of(value)
                .map(|key| key.to_string())
                .map_err(FunctionError::rejected)
        }),
        create: Arc::new(move |params| {
            Box::new(Grouping::<L> {
                aggregator: Aggregator::new(AggregatorConfig {
                    incomplete_timeout: params.incomplete_timeout,
                    ..AggregatorConfig::default()
                }),
                decode: decoder(),
                encode,
                emitted: Vec::new(),
            })
        }),
    }
}

struct Grouping<L: Level> {
    aggregator: Aggregator<L>,
    decode: Decoder<L::Input>,
    encode: fn(&L::Output) -> Value,
    emitted: Vec<Emitted<L::Key, L::Output>>,
}

impl<L: Level> Grouping<L> {
    fn flush(&mut self, ctx: &mut FunctionContext<'_>) {
        for emitted in self.emitted.drain(..) {
            ctx.out.push(match emitted {
                Emitted::Complete { key, output } => FunctionOutput::Emit {
                    key: key.to_string(),
                    value: (self.encode)(&output),
                },
                Emitted::Incomplete(record) => FunctionOutput::Incomplete(record),
                Emitted::Rejected { key, reason } => FunctionOutput::Reject { key, reason },
            });
        }
    }
}

impl<L: Level> StreamFunction for Grouping<L> {
    fn process(
        &mut self,
        _key: &str,
        input: &Value,
        ctx: &mut FunctionContext<'_>,
    ) -> Result<(), FunctionError> {
        let input = (self.decode)(input)?;
        let result = self
            .aggregator
            .ingest(input, ctx.layouts, ctx.now_ms, &mut self.emitted);
        self.flush(ctx);
        match result {
            Ok(Ingested::Duplicate) => {
                ctx.duplicates += 1;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(rejection) => Err(FunctionError::rejected(rejection)),
        }
    }

    fn layout_arrived(&mut self, experiment: &ExperimentId, ctx: &mut FunctionContext<'_>) {
        self.aggregator
            .layout_arrived(experiment, ctx.layouts, ctx.now_ms, &mut self.emitted);
        self.flush(ctx);
    }

    fn tick(&mut self, ctx: &mut FunctionContext<'_>) {
        self.aggregator
            .tick(ctx.layouts, ctx.now_ms, &mut self.emitted);
        self.flush(ctx);
    }

    fn due_ms(&self) -> Option<i64> {
        self.aggregator.due_ms()
    }

    fn take_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        self.aggregator.take_changes()
    }

    fn restore(&mut self, key: &str, entry: Option<&[u8]>) -> Result<(), RestoreError> {
        self.aggregator.restore(key, entry)
    }

    fn restored(&mut self, ctx: &mut FunctionContext<'_>) {
        self.aggregator
            .restored(ctx.layouts, ctx.now_ms, &mut self.emitted);
        self.flush(ctx);
    }

    fn open_count(&self) -> usize {
        self.aggregator.open_count()
    }
}
