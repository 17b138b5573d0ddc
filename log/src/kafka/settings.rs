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
        self.client_with(&[])
    }

    /// A client configuration with Wellspring's `defaults` for this kind of client, each
    /// of them overridden by the same property passed through, and the brokers.
    pub(super) fn client_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        // The brokers given (`--kafka`) are the ones used, whatever a property says.
        config.set("bootstrap.servers", &self.brokers);
        config
    }
}

/// How long the plain producer gathers records before it sends them: sources, `generate`,
/// and every stage's commit when transactions are off. Measured in turn on tansu and
/// nisshi: `generate` publishes 460-480k records/s at 0 ms, 505-560k at 1 and 2, 310-375k
/// at 5 and 220-230k at 10 (it waits for each batch's delivery); a site's p99 at 2,000
/// images/s through nisshi was 269 and 242 ms at 2, 330 and 219 at 10 (the produce
/// requests a second about the same, ~1,400: each commit waits for its own delivery).
pub(super) const PLAIN_LINGER_MS: &str = "2";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_passed_through_overrides_a_default_and_the_brokers_are_always_set() {
        let mut settings = KafkaSettings::new("127.0.0.1:9092");
        let defaults = [("linger.ms", PLAIN_LINGER_MS), ("retry.backoff.ms", "5")];
        let config = settings.client_with(&defaults);
        assert_eq!(config.get("linger.ms"), Some(PLAIN_LINGER_MS));
        assert_eq!(config.get("retry.backoff.ms"), Some("5"));
        settings.properties.insert("linger.ms".into(), "0".into());
        settings
            .properties
            .insert("bootstrap.servers".into(), "elsewhere:1".into());
        let config = settings.client_with(&defaults);
        assert_eq!(config.get("linger.ms"), Some("0"));
        assert_eq!(config.get("retry.backoff.ms"), Some("5"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }
}
