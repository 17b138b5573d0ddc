//! How to reach and use a Kafka cluster: the brokers, librdkafka properties passed
//! through, and Wellspring's own choices (replication, transactions, timeouts). Secrets
//! among the properties are never printed.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;

/// How to reach and use a Kafka cluster.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Extra librdkafka properties, passed through: `security.protocol`, `sasl.*`,
    /// `ssl.*`, ... (secrets among them are never logged).
    pub properties: BTreeMap<String, String>,
    /// Replication factor of the topics Wellspring creates; -1: the brokers' default.
    pub replication_factor: i32,
    /// Commit with transactions (else outputs first, then offsets).
    pub transactions: bool,
    /// Bound on admin, metadata and transaction calls.
    pub timeout: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
            replication_factor: -1,
            transactions: true,
            timeout: Duration::from_secs(30),
        }
    }

    /// Whether a librdkafka property holds a secret (never printed).
    pub fn is_secret(property: &str) -> bool {
        let p = property.to_ascii_lowercase();
        [
            "password",
            "secret",
            "token",
            "jaas",
            "key.pem",
            "credentials",
        ]
        .iter()
        .any(|s| p.contains(s))
    }

    /// A librdkafka client configuration: the brokers and the passed-through properties.
    pub(super) fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if Self::is_secret(k) {
                        "(secret)"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("properties", &properties)
            .field("replication_factor", &self.replication_factor)
            .field("transactions", &self.transactions)
            .field("timeout", &self.timeout)
            .finish()
    }
}
