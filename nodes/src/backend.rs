//! Which log a command runs on: the embedded log (the default: in memory, nothing to set
//! up) or a Kafka cluster (`--kafka BROKERS`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use wellspring_log::{EmbeddedLog, KafkaLog, KafkaSettings, Log, LogError};

/// The `--kafka` options every command that touches the log shares.
#[derive(Args, Debug, Clone, Default)]
pub struct KafkaArgs {
    /// Kafka brokers, host:port[,host:port...]: run on Kafka instead of the embedded log.
    #[arg(long, value_name = "BROKERS", env = "WELLSPRING_KAFKA")]
    pub kafka: Option<String>,
    /// A librdkafka property, passed through as is: --kafka-config security.protocol=SASL_SSL
    /// (repeat). Put secrets in --kafka-config-file, where `ps` does not show them.
    #[arg(long = "kafka-config", value_name = "NAME=VALUE")]
    pub kafka_config: Vec<String>,
    /// A file of librdkafka properties, one name=value per line (# starts a comment):
    /// sasl.username, sasl.password, ssl.ca.location, ...
    #[arg(long, value_name = "FILE", env = "WELLSPRING_KAFKA_CONFIG_FILE")]
    pub kafka_config_file: Option<PathBuf>,
    /// Replication factor of the topics Wellspring creates (default: the brokers').
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: Option<i32>,
    /// Commit without transactions: outputs first, then input offsets (for brokers
    /// without transactions; a crash between the two repeats outputs, with the same ids).
    #[arg(long)]
    pub no_transactions: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{flag} {item:?} must look like name=value")]
    BadProperty { flag: &'static str, item: String },
    #[error("cannot read the Kafka config file {path}: {source}")]
    ConfigFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--replication-factor must be at least 1, not {0}")]
    ReplicationFactor(i32),
    #[error(
        "{0}; start the node with --no-transactions (outputs are then committed before the input offsets and stay effectively once by their ids)"
    )]
    NoTransactions(LogError),
    #[error("{0}")]
    Log(LogError),
}

impl From<LogError> for BackendError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::TransactionsUnsupported(_) => BackendError::NoTransactions(error),
            other => BackendError::Log(other),
        }
    }
}

fn property(item: &str, flag: &'static str) -> Result<(String, String), BackendError> {
    item.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| BackendError::BadProperty {
            flag,
            item: if KafkaSettings::is_secret(item) {
                "(a secret)".into()
            } else {
                item.to_owned()
            },
        })
}

impl KafkaArgs {
    /// The Kafka settings, when `--kafka` was given.
    pub fn settings(&self) -> Result<Option<KafkaSettings>, BackendError> {
        let Some(brokers) = &self.kafka else {
            return Ok(None);
        };
        let mut properties = BTreeMap::new();
        if let Some(path) = &self.kafka_config_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| BackendError::ConfigFile {
                    path: path.clone(),
                    source,
                })?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = property(line, "--kafka-config-file line")?;
                properties.insert(k, v);
            }
        }
        for item in &self.kafka_config {
            let (k, v) = property(item, "--kafka-config")?;
            properties.insert(k, v);
        }
        let mut settings = KafkaSettings::new(brokers.clone());
        settings.properties = properties;
        settings.transactions = !self.no_transactions;
        if let Some(factor) = self.replication_factor {
            if factor < 1 {
                return Err(BackendError::ReplicationFactor(factor));
            }
            settings.replication_factor = factor;
        }
        Ok(Some(settings))
    }

    /// Connects to Kafka when `--kafka` was given. With transactions on, checks whether
    /// the brokers hide aborted transactions from read_committed readers, and says so
    /// when they do not.
    pub async fn connect(&self, topic_prefix: &str) -> Result<Option<KafkaLog>, BackendError> {
        let Some(settings) = self.settings()? else {
            return Ok(None);
        };
        let log = KafkaLog::connect(settings).await?;
        if log.settings().transactions && !log.hides_aborted_transactions(topic_prefix).await? {
            tracing::warn!(
                "the Kafka brokers at {} show records of aborted transactions to read_committed readers; \
                 Wellspring's outputs stay effectively once by their ids (header wellspring-id), so \
                 consumers must drop repeated ids",
                log.settings().brokers
            );
        }
        Ok(Some(log))
    }

    /// The log to run on: Kafka when `--kafka` was given, else a new embedded log.
    pub async fn log(&self, topic_prefix: &str) -> Result<Arc<dyn Log>, BackendError> {
        Ok(match self.connect(topic_prefix).await? {
            Some(kafka) => Arc::new(kafka),
            None => Arc::new(EmbeddedLog::new()),
        })
    }

    pub fn is_kafka(&self) -> bool {
        self.kafka.is_some()
    }
}

/// Blocks on `future` in a small runtime of its own (commands start before any actor
/// system does).
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, std::io::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(future);
    // librdkafka work handed to blocking threads must not hold the command up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_come_from_the_file_and_the_flags_and_the_flags_win() {
        let dir = std::env::temp_dir().join(format!("wellspring-kafka-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kafka.properties");
        std::fs::write(
            &file,
            "# credentials\nsasl.username = lab\nsasl.password=s3cret\n\nsecurity.protocol=SASL_PLAINTEXT\n",
        )
        .unwrap();
        let args = KafkaArgs {
            kafka: Some("k1:9092,k2:9092".into()),
            kafka_config: vec!["security.protocol=SASL_SSL".into()],
            kafka_config_file: Some(file),
            replication_factor: Some(3),
            no_transactions: false,
        };
        let settings = args.settings().unwrap().unwrap();
        assert_eq!(settings.brokers, "k1:9092,k2:9092");
        assert_eq!(settings.properties["sasl.username"], "lab");
        assert_eq!(settings.properties["sasl.password"], "s3cret");
        assert_eq!(settings.properties["security.protocol"], "SASL_SSL");
        assert_eq!(settings.replication_factor, 3);
        assert!(settings.transactions);
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn bad_properties_are_named_but_secrets_are_not_echoed() {
        let args = KafkaArgs {
            kafka: Some("k:9092".into()),
            kafka_config: vec!["sasl.password".into()],
            ..KafkaArgs::default()
        };
        let err = args.settings().unwrap_err().to_string();
        assert!(
            err.contains("--kafka-config") && err.contains("(a secret)"),
            "{err}"
        );
        let args = KafkaArgs {
            kafka: Some("k:9092".into()),
            replication_factor: Some(0),
            ..KafkaArgs::default()
        };
        assert!(
            args.settings()
                .unwrap_err()
                .to_string()
                .contains("at least 1")
        );
        assert!(KafkaArgs::default().settings().unwrap().is_none());
    }
}
