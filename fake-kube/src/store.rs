//! The objects, the resourceVersion counter and the history of events that watches
//! replay.
//!
//! One counter orders every write to every resource, as etcd's revision does under the
//! real server, so a resourceVersion is comparable across resources and a watch can resume
//! "after" any of them. Each write takes the next value, stores it in the object's
//! `metadata.resourceVersion` and appends one event to the history. An update that
//! changes nothing is not a write (the real server skips it too): no new resourceVersion,
//! no event.
//!
//! Optimistic concurrency lives here: an update that names a resourceVersion (or uid)
//! other than the stored one is refused with 409 Conflict, before anything changes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::resource::{Collection, Resource, Scope};
use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches see it.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) resource_version: u64,
    pub(crate) collection: Collection,
    pub(crate) kind: EventType,
    /// The object after the write; for a deletion, its last state with the deletion's
    /// resourceVersion.
    pub(crate) object: Value,
    /// The object before a modification: a watch with a selector needs it to tell an
    /// object entering or leaving its selection.
    pub(crate) previous: Option<Value>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Since {
    /// The current objects as ADDED events, then what follows.
    Snapshot,
    /// Only what follows.
    Now,
    /// The retained events after this resourceVersion, then what follows.
    After(u64),
}

/// A watch's start: what it sends first, and the channel of what follows. Taken under the
/// store's lock, so that nothing falls between the two and nothing is in both.
pub(crate) struct Subscription {
    pub(crate) snapshot: Vec<Value>,
    pub(crate) replay: Vec<Arc<Event>>,
    pub(crate) events: broadcast::Receiver<Arc<Event>>,
    pub(crate) resource_version: u64,
}

/// A deletion's `DeleteOptions.preconditions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Preconditions {
    pub(crate) resource_version: Option<String>,
    pub(crate) uid: Option<String>,
}

pub(crate) struct Store {
    resource_version: u64,
    objects: BTreeMap<Collection, BTreeMap<String, Value>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// The resourceVersion of the newest event dropped from the history: a watch can
    /// resume after this version or a later one, not from before it.
    evicted_through: u64,
    events: broadcast::Sender<Arc<Event>>,
}

impl Store {
    /// `channel_capacity` bounds how far a watch may fall behind the writes before it is
    /// ended with 410 Expired.
    pub(crate) fn new(history_limit: usize, channel_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(channel_capacity.max(1));
        Self {
            resource_version: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit,
            evicted_through: 0,
            events,
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(crate) fn get(&self, collection: &Collection, name: &str) -> Option<&Value> {
        self.objects.get(collection)?.get(name)
    }

    /// The objects of a resource in a scope, by namespace then name.
    pub(crate) fn list(&self, resource: &Resource, scope: &Scope) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(c, _)| c.resource == *resource && scope.contains(&c.namespace))
            .flat_map(|(_, objects)| objects.values().cloned())
            .collect()
    }

    pub(crate) fn create(
        &mut self,
        collection: &Collection,
        body: Value,
    ) -> Result<Value, ApiError> {
        let resource = &collection.resource;
        let Value::Object(mut object) = body else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        let mut meta = take_metadata(&mut object);
        let given_name = non_empty(&meta, "name").map(str::to_owned);
        if let Some(version) = non_empty(&meta, "resourceVersion") {
            let cause = format!(
                "metadata.resourceVersion: Invalid value: \"{version}\": \
                 resourceVersion should not be set on objects to be created"
            );
            return Err(ApiError::invalid(
                resource,
                given_name.as_deref().unwrap_or_default(),
                &cause,
            ));
        }
        check_namespace(&meta, collection)?;
        let name = match (given_name, non_empty(&meta, "generateName")) {
            (Some(name), _) => name,
            (None, Some(prefix)) => self.generate_name(collection, prefix),
            (None, None) => {
                return Err(ApiError::invalid(
                    resource,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        if self.get(collection, &name).is_some() {
            return Err(ApiError::already_exists(resource, &name));
        }
        let resource_version = self.next_resource_version();
        meta.insert("name".into(), name.clone().into());
        meta.insert("namespace".into(), collection.namespace.clone().into());
        meta.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
        meta.insert(
            "creationTimestamp".into(),
            rfc3339(SystemTime::now()).into(),
        );
        meta.insert("generation".into(), 1.into());
        meta.insert(
            "resourceVersion".into(),
            resource_version.to_string().into(),
        );
        object.insert("metadata".into(), Value::Object(meta));
        fill_type(&mut object, resource);
        let object = Value::Object(object);
        self.objects
            .entry(collection.clone())
            .or_default()
            .insert(name, object.clone());
        self.record(
            resource_version,
            collection,
            EventType::Added,
            object.clone(),
            None,
        );
        Ok(object)
    }

    /// Replaces the stored object with `proposed`, as a PUT does; PATCH and the
    /// subresources build `proposed` from the stored object and come here too.
    ///
    /// A resourceVersion or uid in `proposed` is a precondition. The identity (name,
    /// namespace, uid, creationTimestamp) stays the stored one; the generation moves
    /// when the spec changes.
    pub(crate) fn update(
        &mut self,
        collection: &Collection,
        name: &str,
        proposed: Value,
    ) -> Result<Value, ApiError> {
        let resource = &collection.resource;
        let current = self
            .get(collection, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let Value::Object(mut object) = proposed else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        let mut meta = take_metadata(&mut object);
        if let Some(version) = non_empty(&meta, "resourceVersion")
            && Some(version) != meta_str(&current, "resourceVersion")
        {
            return Err(ApiError::modified(resource, name));
        }
        if let Some(uid) = non_empty(&meta, "uid") {
            let stored = meta_str(&current, "uid").unwrap_or_default();
            if uid != stored {
                let why = format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}"
                );
                return Err(ApiError::conflict(resource, name, &why));
            }
        }
        if let Some(named) = non_empty(&meta, "name")
            && named != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({named}) does not match the name on the URL ({name})"
            )));
        }
        check_namespace(&meta, collection)?;

        meta.insert("name".into(), name.into());
        meta.insert("namespace".into(), collection.namespace.clone().into());
        for kept in ["uid", "creationTimestamp", "resourceVersion"] {
            match current.get("metadata").and_then(|m| m.get(kept)) {
                Some(value) => meta.insert(kept.into(), value.clone()),
                None => meta.remove(kept),
            };
        }
        let generation = current
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = object.get("spec") != current.get("spec");
        meta.insert(
            "generation".into(),
            (generation + i64::from(spec_changed)).into(),
        );
        object.insert("metadata".into(), Value::Object(meta));
        fill_type(&mut object, resource);
        let mut next = Value::Object(object);
        if next == current {
            return Ok(current);
        }
        let resource_version = self.next_resource_version();
        set_resource_version(&mut next, resource_version);
        if let Some(objects) = self.objects.get_mut(collection) {
            objects.insert(name.to_owned(), next.clone());
        }
        self.record(
            resource_version,
            collection,
            EventType::Modified,
            next.clone(),
            Some(current),
        );
        Ok(next)
    }

    pub(crate) fn delete(
        &mut self,
        collection: &Collection,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Value, ApiError> {
        let resource = &collection.resource;
        let current = self
            .get(collection, name)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        if let Some(version) = &preconditions.resource_version {
            let stored = meta_str(current, "resourceVersion").unwrap_or_default();
            if version != stored {
                let why = format!(
                    "Precondition failed: ResourceVersion in precondition: {version}, \
                     ResourceVersion in object meta: {stored}"
                );
                return Err(ApiError::conflict(resource, name, &why));
            }
        }
        if let Some(uid) = &preconditions.uid {
            let stored = meta_str(current, "uid").unwrap_or_default();
            if uid != stored {
                let why = format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}"
                );
                return Err(ApiError::conflict(resource, name, &why));
            }
        }
        let mut object = self
            .objects
            .get_mut(collection)
            .and_then(|objects| objects.remove(name))
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        // The deletion is a write of its own: the real server answers, and the DELETED
        // event carries, the object at the deletion's revision.
        let resource_version = self.next_resource_version();
        set_resource_version(&mut object, resource_version);
        self.record(
            resource_version,
            collection,
            EventType::Deleted,
            object.clone(),
            None,
        );
        Ok(object)
    }

    /// A test's write: create, or replace unconditionally (a resourceVersion or uid in
    /// the object is ignored rather than taken as a precondition).
    pub(crate) fn apply(
        &mut self,
        collection: &Collection,
        object: Value,
    ) -> Result<Value, ApiError> {
        let Value::Object(mut object) = object else {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        };
        let mut meta = take_metadata(&mut object);
        meta.remove("resourceVersion");
        let existing = non_empty(&meta, "name")
            .filter(|name| self.get(collection, name).is_some())
            .map(str::to_owned);
        match existing {
            Some(name) => {
                meta.remove("uid");
                object.insert("metadata".into(), Value::Object(meta));
                self.update(collection, &name, Value::Object(object))
            }
            None => {
                object.insert("metadata".into(), Value::Object(meta));
                self.create(collection, Value::Object(object))
            }
        }
    }

    pub(crate) fn subscribe(
        &self,
        resource: &Resource,
        scope: &Scope,
        since: Since,
    ) -> Result<Subscription, ApiError> {
        let (snapshot, replay) = match since {
            Since::Snapshot => (self.list(resource, scope), Vec::new()),
            Since::Now => (Vec::new(), Vec::new()),
            Since::After(version) => {
                if version < self.evicted_through {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {version} ({})",
                        self.evicted_through
                    )));
                }
                let replay = self
                    .history
                    .iter()
                    .filter(|event| event.resource_version > version)
                    .cloned()
                    .collect();
                (Vec::new(), replay)
            }
        };
        Ok(Subscription {
            snapshot,
            replay,
            events: self.events.subscribe(),
            resource_version: self.resource_version,
        })
    }

    pub(crate) fn set_history_limit(&mut self, events: usize) {
        self.history_limit = events;
        self.trim_history();
    }

    fn next_resource_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(
        &mut self,
        resource_version: u64,
        collection: &Collection,
        kind: EventType,
        object: Value,
        previous: Option<Value>,
    ) {
        let event = Arc::new(Event {
            resource_version,
            collection: collection.clone(),
            kind,
            object,
            previous,
        });
        self.history.push_back(event.clone());
        self.trim_history();
        // No watcher is no error.
        let _ = self.events.send(event);
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(evicted) = self.history.pop_front() {
                self.evicted_through = evicted.resource_version;
            }
        }
    }

    /// `generateName` plus five random characters, from the real server's alphabet.
    fn generate_name(&self, collection: &Collection, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        loop {
            let random = uuid::Uuid::new_v4();
            let suffix: String = random.as_bytes()[..5]
                .iter()
                .map(|byte| char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]))
                .collect();
            let name = format!("{prefix}{suffix}");
            if self.get(collection, &name).is_none() {
                return name;
            }
        }
    }
}

/// The object's `metadata`, taken out to be edited and put back (an absent or malformed
/// one reads as empty).
fn take_metadata(object: &mut Map<String, Value>) -> Map<String, Value> {
    match object.remove("metadata") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    }
}

fn non_empty<'a>(meta: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    meta.get(field)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
}

pub(crate) fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn set_resource_version(object: &mut Value, resource_version: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            resource_version.to_string().into(),
        );
    }
}

/// A body may leave out `apiVersion` and `kind`; answers always carry them.
fn fill_type(object: &mut Map<String, Value>, resource: &Resource) {
    object
        .entry("apiVersion")
        .or_insert_with(|| resource.api_version().into());
    object
        .entry("kind")
        .or_insert_with(|| resource.kind().into());
}

fn check_namespace(meta: &Map<String, Value>, collection: &Collection) -> Result<(), ApiError> {
    match non_empty(meta, "namespace") {
        Some(namespace) if namespace != collection.namespace => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

/// RFC 3339 in UTC to the second, as Kubernetes writes its timestamps.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn pods() -> Collection {
        crate::resource::parse_collection("/api/v1/namespaces/lab/pods").expect("a collection")
    }

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(1_795_341_600), "2026-11-22T10:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn every_write_takes_the_next_resource_version_and_no_ops_none() {
        let mut store = Store::new(10, 16);
        let created = store
            .create(
                &pods(),
                json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
            )
            .expect("created");
        assert_eq!(meta_str(&created, "resourceVersion"), Some("1"));
        let same = store
            .update(&pods(), "a", created.clone())
            .expect("a no-op update");
        assert_eq!(
            same, created,
            "an update that changes nothing is not a write"
        );
        assert_eq!(store.resource_version(), 1);
        let mut changed = created.clone();
        changed["spec"]["x"] = json!(2);
        let updated = store.update(&pods(), "a", changed).expect("updated");
        assert_eq!(meta_str(&updated, "resourceVersion"), Some("2"));
        assert_eq!(updated["metadata"]["generation"], json!(2));
        let deleted = store
            .delete(&pods(), "a", &Preconditions::default())
            .expect("deleted");
        assert_eq!(meta_str(&deleted, "resourceVersion"), Some("3"));
        assert_eq!(store.history.len(), 3);
    }

    #[test]
    fn a_trimmed_history_expires_older_watches() {
        let mut store = Store::new(2, 16);
        for name in ["a", "b", "c", "d"] {
            store
                .create(&pods(), json!({"metadata": {"name": name}}))
                .expect("created");
        }
        let resource = pods().resource;
        let scope = Scope::All;
        let expired = store.subscribe(&resource, &scope, Since::After(1)).err();
        assert_eq!(
            expired.map(|e| (e.code, e.message)),
            Some((410, "too old resource version: 1 (2)".to_owned()))
        );
        let resumed = store
            .subscribe(&resource, &scope, Since::After(2))
            .expect("version 2 is the oldest a watch can resume after");
        let replayed: Vec<u64> = resumed.replay.iter().map(|e| e.resource_version).collect();
        assert_eq!(replayed, [3, 4]);
    }
}
