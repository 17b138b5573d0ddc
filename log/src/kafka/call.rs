//! Calling librdkafka from async code: its blocking calls run on tokio's blocking pool,
//! and its errors become [`LogError`]s in words that say what to do.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::LogError;

/// What librdkafka says, in words that tell what to do.
pub(super) fn explain(e: &KafkaError, brokers: &str) -> LogError {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::OperationTimedOut,
        ) => LogError::Unreachable(format!(
            "no answer from the Kafka brokers at {brokers} ({e}); check --kafka and that the brokers are up"
        )),
        Some(
            RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::FencedInstanceId,
        ) => LogError::Fenced(format!("{e}")),
        Some(RDKafkaErrorCode::TransactionalIdAuthorizationFailed) => {
            LogError::TransactionsUnsupported(brokers.to_owned())
        }
        // The member may keep its partitions, but this batch is not committed: the caller
        // must restart from the last commit rather than carry on past it.
        Some(
            RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::RebalanceInProgress,
        ) => LogError::CommitAborted(e.to_string()),
        _ => LogError::Other(format!("Kafka: {e}")),
    }
}

/// Runs a blocking librdkafka call off the async thread.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Other(format!("a Kafka call panicked: {e}")))
}
