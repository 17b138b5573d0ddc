//! Leaving a consumer group at once, as a static member.
//!
//! librdkafka's close never sends a LeaveGroup for a static member (KIP-345: a restarted
//! pod should get its partitions back), but an unsubscribe of a running member does, once
//! the revoke is served. A member that stops uses this to hand its partitions over now
//! instead of after its session timeout, and so does the stand-in that evicts a lost
//! member. (A member that crashes or is killed sends nothing, and keeps its partitions
//! for the session timeout, as static membership intends.)

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};

/// Leaves the consumer group, so that the member's partitions move to the others at once:
/// unsubscribe, poll until the member owns nothing, and give the LeaveGroup a moment to go
/// out before the consumer is closed. Blocking.
pub(super) fn leave_group<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    let started = Instant::now();
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && consumer
            .assignment()
            .is_ok_and(|assigned| assigned.count() > 0)
    {
        let _ = consumer.poll(Duration::from_millis(20));
    }
    tracing::debug!(
        revoked_ms = started.elapsed().as_millis() as u64,
        "unsubscribed; leaving the group"
    );
    let settle = Instant::now() + Duration::from_millis(200);
    while Instant::now() < settle {
        let _ = consumer.poll(Duration::from_millis(20));
    }
}
