use std::sync::atomic::{AtomicU64, Ordering};

use wellspring_protocol::taskstore::{Millis, Report, RetrySettings};

use super::*;

fn settings() -> GroupSettings {
    GroupSettings {
        name: "g".into(),
        max_run_time: Millis(60_000),
        retry: RetrySettings {
            max_attempts: 3,
            initial_backoff: Millis(1_000),
            max_backoff: Millis(10_000),
            multiplier: 2.0,
        },
        autoscaling: Default::default(),
        worker_deployment: None,
        worker_job: None,
    }
}

fn lookup(name: &str) -> Option<GroupSettings> {
    (name == "g").then(settings)
}

/// Increasing queue numbers, as the store hands them out.
fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn new_task(key: Option<&str>) -> NewTask {
    NewTask {
        cmd: vec!["run.py".into()],
        group: "g".into(),
        labels: Default::default(),
        idempotency_key: key.map(str::to_owned),
    }
}

fn submit(table: &mut TaskTable, key: Option<&str>, now: i64) -> (TaskState, bool) {
    table
        .submit(Uuid::new_v4(), new_task(key), None, next_seq(), now)
        .unwrap()
}

fn report(task: &TaskState, client: &str, version: u64, error: Option<&str>) -> Report {
    Report {
        client_id: client.into(),
        id: task.id,
        version,
        elapsed_time: Some(5),
        output: error.is_none().then(|| serde_json::json!("ok")),
        error: error.map(str::to_owned),
    }
}

fn groups() -> Vec<String> {
    vec!["g".into()]
}

#[test]
fn submit_claim_extend_succeed_with_versions() {
    let mut table = TaskTable::default();
    let (task, created) = submit(&mut table, None, 0);
    assert!(created);
    assert_eq!((task.version, task.status), (0, TaskStatus::Available));
    let claimed = table.claim(&groups(), "c1", 30_000, 10).unwrap();
    assert_eq!(
        (claimed.version, claimed.status, claimed.attempts),
        (1, TaskStatus::Leased, 1)
    );
    assert!(
        table.claim(&groups(), "c2", 30_000, 10).is_none(),
        "leased to at most one client"
    );
    let extended = table.extend(&task.id, "c1", 1, 30_000, 20).unwrap();
    assert_eq!(extended.version, 2);
    assert_eq!(extended.lease.unwrap().expires_ms, 30_020);
    let (done, changed) = table.succeed(&report(&task, "c1", 2, None), 30).unwrap();
    assert!(changed);
    assert_eq!((done.version, done.status), (3, TaskStatus::Succeeded));
    assert_eq!(done.output, Some(Value::from("ok")));
    // Repeating the same report is answered the same, with no change.
    let (again, changed) = table.succeed(&report(&task, "c1", 2, None), 40).unwrap();
    assert!(!changed);
    assert_eq!(again, done);
}

#[test]
fn stale_versions_and_other_clients_are_conflicts() {
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, None, 0);
    table.claim(&groups(), "c1", 30_000, 0).unwrap();
    table.extend(&task.id, "c1", 1, 30_000, 0).unwrap();
    let stale = table.extend(&task.id, "c1", 1, 30_000, 0).unwrap_err();
    assert!(
        matches!(&stale, TaskError::Conflict(m) if m.contains("version 1") && m.contains("stale")),
        "{stale}"
    );
    let other = table.succeed(&report(&task, "c2", 2, None), 0).unwrap_err();
    assert!(
        matches!(&other, TaskError::Conflict(m) if m.contains("leased to another client")),
        "{other}"
    );
    assert!(matches!(
        table.extend(&Uuid::new_v4(), "c1", 0, 1, 0),
        Err(TaskError::NotFound(_))
    ));
}

#[test]
fn an_unextended_lease_expires_and_the_task_is_claimable_again() {
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, None, 0);
    table.claim(&groups(), "vanished", 1_000, 0).unwrap();
    assert!(
        table
            .tick(&lookup, 0, 999, DEFAULT_TERMINAL_RETENTION_MS)
            .is_empty()
    );
    let changes = table.tick(&lookup, 0, 1_000, DEFAULT_TERMINAL_RETENTION_MS);
    let [Change::Put(expired)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(expired.status, TaskStatus::Available);
    assert!(
        expired
            .last_error
            .as_deref()
            .unwrap()
            .contains("lease of client \"vanished\" expired")
    );
    // Back-off after the first failed attempt: 1 s.
    assert!(table.claim(&groups(), "c2", 1_000, 1_500).is_none());
    let again = table.claim(&groups(), "c2", 1_000, 2_000).unwrap();
    assert_eq!(
        (again.attempts, again.lease.unwrap().client_id.as_str()),
        (2, "c2")
    );
    // The first client's late report is refused.
    assert!(matches!(
        table.succeed(&report(&task, "vanished", 1, None), 2_100),
        Err(TaskError::Conflict(_))
    ));
}

#[test]
fn a_hanging_task_is_halted_even_if_extended() {
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, None, 0);
    table.claim(&groups(), "c1", 10_000, 0).unwrap();
    let mut version = 1;
    for now in (5_000..60_000).step_by(5_000) {
        version = table
            .extend(&task.id, "c1", version, 10_000, now)
            .unwrap()
            .version;
    }
    // The shard passes the shortest max run time of its groups: only leases claimed at
    // least that long ago are looked at.
    let shortest = settings().max_run_time.0 as i64;
    assert!(
        table
            .tick(&lookup, shortest, 59_999, DEFAULT_TERMINAL_RETENTION_MS)
            .is_empty()
    );
    let changes = table.tick(&lookup, shortest, 60_000, DEFAULT_TERMINAL_RETENTION_MS);
    let [Change::Put(halted)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(halted.status, TaskStatus::Available);
    assert!(
        halted
            .last_error
            .as_deref()
            .unwrap()
            .contains("max-run-time")
    );
}

#[test]
fn failures_retry_with_backoff_then_dead_letter_with_the_last_error() {
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, None, 0);
    let mut now = 0;
    for attempt in 1..=3u32 {
        let claimed = table.claim(&groups(), "w", 1_000, now).unwrap();
        assert_eq!(claimed.attempts, attempt);
        let error = format!("boom {attempt}");
        let (failed, _) = table
            .fail(
                &report(&task, "w", claimed.version, Some(&error)),
                &settings(),
                now,
            )
            .unwrap();
        if attempt < 3 {
            assert_eq!(failed.status, TaskStatus::Available);
            let backoff = settings().retry.backoff_ms(attempt) as i64;
            assert_eq!(failed.not_before_ms, now + backoff, "attempt {attempt}");
            now += backoff;
        } else {
            assert_eq!(failed.status, TaskStatus::DeadLettered);
            assert_eq!(
                failed.last_error.as_deref(),
                Some("boom 3 (attempt 3 of 3)")
            );
        }
    }
    assert!(table.claim(&groups(), "w", 1_000, now + 100_000).is_none());
    let stats = table.stats("g", now);
    assert_eq!((stats.dead_lettered, stats.available), (1, 0));
}

#[test]
fn idempotency_keys_queue_order_and_heads() {
    let mut table = TaskTable::default();
    let (first, created) = submit(&mut table, Some("k"), 0);
    assert!(created);
    let (again, created) = submit(&mut table, Some("k"), 5);
    assert!(!created);
    assert_eq!(again.id, first.id);
    let ids: Vec<Uuid> = (0..5)
        .map(|i| submit(&mut table, None, 10 + i).0.id)
        .collect();
    assert_eq!(table.head(&groups(), 100), Some((0, first.seq)));
    assert_eq!(table.head(&["other".to_string()], 100), None);
    // What a shard publishes for claims answers the same.
    let heads = crate::taskstore::shard::QueueHeads::default();
    heads.publish(&table);
    assert_eq!(heads.head(&groups(), 100), Some((0, first.seq)));
    assert_eq!(heads.head(&["other".to_string()], 100), None);
    let claimed: Vec<Uuid> = (0..6)
        .map(|_| table.claim(&groups(), "c", 1_000, 100).unwrap().id)
        .collect();
    assert_eq!(claimed[0], first.id);
    assert_eq!(&claimed[1..], &ids[..], "first in, first out");
    assert_eq!(table.head(&groups(), 100), None);
    assert_eq!(
        heads.head(&groups(), 100),
        Some((0, first.seq)),
        "until published"
    );
    heads.publish(&table);
    assert_eq!(heads.head(&groups(), 100), None);
}

#[test]
fn a_task_waiting_out_its_back_off_is_not_at_the_head_until_it_is_due() {
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, None, 0);
    let claimed = table.claim(&groups(), "w", 1_000, 0).unwrap();
    table
        .fail(
            &report(&task, "w", claimed.version, Some("boom")),
            &settings(),
            0,
        )
        .unwrap();
    // Back-off after the first failed attempt: 1 s.
    assert_eq!(table.head(&groups(), 999), None);
    assert!(table.claim(&groups(), "w", 1_000, 999).is_none());
    let heads = crate::taskstore::shard::QueueHeads::default();
    heads.publish(&table);
    assert_eq!(heads.head(&groups(), 999), None);
    assert_eq!(heads.head(&groups(), 1_000), Some((1_000, task.seq)));
    assert_eq!(table.head(&groups(), 1_000), Some((1_000, task.seq)));
}

#[test]
fn restoring_from_the_log_keeps_the_latest_version_and_the_indexes() {
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, Some("k"), 0);
    let leased = table.claim(&groups(), "c", 1_000, 0).unwrap();
    let mut restored = TaskTable::default();
    restored.apply(leased.clone());
    restored.apply(task.clone()); // an older version read later changes nothing
    assert_eq!(restored.get(&task.id).unwrap().version, 1);
    assert!(
        restored.claim(&groups(), "d", 1_000, 0).is_none(),
        "still leased"
    );
    let changes = restored.tick(&lookup, 0, 1_000, DEFAULT_TERMINAL_RETENTION_MS);
    assert_eq!(changes.len(), 1, "the restored lease expires");
    let (dup, created) = submit(&mut restored, Some("k"), 0);
    assert!(!created && dup.id == task.id);
}

#[test]
fn finished_tasks_are_forgotten_after_the_retention() {
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, None, 0);
    let claimed = table.claim(&groups(), "c", 1_000, 0).unwrap();
    table
        .succeed(&report(&task, "c", claimed.version, None), 0)
        .unwrap();
    assert!(table.tick(&lookup, 0, 100, 1_000).is_empty());
    assert_eq!(
        table.tick(&lookup, 0, 1_001, 1_000),
        vec![Change::Delete(task.id)]
    );
    assert!(table.is_empty());
}

/// The stage sleeps until `due_ms`: a tick just before it finds nothing, a tick at it
/// finds what came due (a lease's expiry, a task's halt, a finished task's retention).
fn assert_due_is_the_first_tick_with_work(table: &mut TaskTable, shortest: i64, retention: i64) {
    let due = table
        .due_ms(&lookup, shortest, 0, retention)
        .expect("something is due");
    assert!(
        table.tick(&lookup, shortest, due - 1, retention).is_empty(),
        "nothing before {due}"
    );
    assert!(
        !table.tick(&lookup, shortest, due, retention).is_empty(),
        "work at {due}"
    );
}

#[test]
fn the_next_tick_is_due_when_a_lease_expires_a_task_halts_or_a_finished_one_is_forgotten() {
    let retention = DEFAULT_TERMINAL_RETENTION_MS;
    let shortest = settings().max_run_time.0 as i64;
    let mut table = TaskTable::default();
    assert_eq!(
        table.due_ms(&lookup, shortest, 0, retention),
        None,
        "an empty table"
    );
    submit(&mut table, None, 0);
    assert_eq!(
        table.due_ms(&lookup, shortest, 0, retention),
        None,
        "a task waiting for a claim needs no timer"
    );

    // A lease of 1 s expires before the group's 60-s maximum run time.
    table.claim(&groups(), "vanished", 1_000, 0).unwrap();
    assert_eq!(table.due_ms(&lookup, shortest, 0, retention), Some(1_000));
    assert_due_is_the_first_tick_with_work(&mut table, shortest, retention);

    // A task whose lease is extended past its maximum run time halts at that maximum,
    // with the shortest maximum passed as the shard does, or 0 (every lease looked at).
    for shortest in [shortest, 0] {
        let mut table = TaskTable::default();
        let (task, _) = submit(&mut table, None, 0);
        let claimed = table.claim(&groups(), "c1", 100_000, 0).unwrap();
        table
            .extend(&task.id, "c1", claimed.version, 100_000, 30_000)
            .unwrap();
        assert_eq!(
            table.due_ms(&lookup, shortest, 30_000, retention),
            Some(60_000)
        );
        assert_due_is_the_first_tick_with_work(&mut table, shortest, retention);
    }

    // A finished task is forgotten one millisecond past the retention.
    let mut table = TaskTable::default();
    let (task, _) = submit(&mut table, None, 0);
    let claimed = table.claim(&groups(), "c", 1_000, 0).unwrap();
    table
        .succeed(&report(&task, "c", claimed.version, None), 500)
        .unwrap();
    assert_eq!(table.due_ms(&lookup, shortest, 500, 1_000), Some(1_501));
    assert_due_is_the_first_tick_with_work(&mut table, shortest, 1_000);
    assert_eq!(
        table.due_ms(&lookup, shortest, 2_000, 1_000),
        None,
        "all done"
    );

    // A lease of a group this node does not know yet: `tick` leaves it, and it is not
    // due again at once (the stage would cycle without a pause).
    let mut table = TaskTable::default();
    submit(&mut table, None, 0);
    table.claim(&groups(), "c", 1_000, 0).unwrap();
    let unknown = |_: &str| None;
    assert!(table.tick(&unknown, shortest, 5_000, retention).is_empty());
    // Next due: where a halt would be looked at, in the future.
    assert_eq!(
        table.due_ms(&unknown, shortest, 5_000, retention),
        Some(shortest)
    );
    assert!(
        table
            .tick(&unknown, shortest, shortest, retention)
            .is_empty()
    );
    assert_eq!(table.due_ms(&unknown, shortest, shortest, retention), None);
}
