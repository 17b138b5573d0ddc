//! The clients a `KafkaLog` and its consumers share, and what they remember between
//! calls: an admin client for topics, a `read_committed` consumer for metadata and
//! watermarks, the plain (idempotent) producer, the partition counts and cleanup
//! policies seen, and the consumer groups this log's static members joined.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use super::call::explain;
use super::eviction::StaticGroup;
use super::settings::{KafkaSettings, PLAIN_LINGER_MS};
use crate::LogError;
use crate::time::{Clock, SystemClock};

pub(super) struct Connection {
    pub settings: KafkaSettings,
    pub admin: AdminClient<DefaultClientContext>,
    /// For metadata and watermarks (read_committed: the end is the last stable offset).
    pub meta: BaseConsumer,
    pub producer: FutureProducer,
    /// Partition counts by topic, as created or first looked up.
    pub partitions: Mutex<HashMap<String, u32>>,
    /// Whether each topic compacts, as created, checked or first asked (consumers read
    /// again only the holes of topics that do not).
    pub compacted: Mutex<HashMap<String, bool>>,
    pub clock: Arc<dyn Clock>,
    /// The groups this log's static members joined (to evict a lost peer from them).
    pub static_groups: Mutex<BTreeMap<String, StaticGroup>>,
}

impl Connection {
    /// Creates the clients (librdkafka connects in the background: nothing is asked of
    /// the brokers yet).
    pub fn open(settings: KafkaSettings) -> Result<Self, LogError> {
        let fail = |e: KafkaError| explain(&e, &settings.brokers);
        let admin: AdminClient<DefaultClientContext> = settings.client().create().map_err(fail)?;
        let meta: BaseConsumer = settings
            .client()
            .set("group.id", "wellspring-metadata")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(fail)?;
        let producer: FutureProducer = settings
            .client_with(&[("linger.ms", PLAIN_LINGER_MS)])
            .set("enable.idempotence", "true")
            .create()
            .map_err(fail)?;
        Ok(Self {
            settings,
            admin,
            meta,
            producer,
            partitions: Mutex::new(HashMap::new()),
            compacted: Mutex::new(HashMap::new()),
            clock: Arc::new(SystemClock),
            static_groups: Mutex::new(BTreeMap::new()),
        })
    }

    /// A librdkafka error in words, naming this cluster's brokers.
    pub fn explain(&self, e: &KafkaError) -> LogError {
        explain(e, &self.settings.brokers)
    }
}
