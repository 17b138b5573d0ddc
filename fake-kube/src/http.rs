//! The HTTP surface: one fallback handler that parses the path itself (any resource
//! under any group), applies the injected faults, dispatches by target and method, and
//! records what it answered.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::patch::{self, PatchError, PatchKind};
use crate::resource::{Collection, Resource, Scope, Target, parse_path};
use crate::scale;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Preconditions, Since};
use crate::watch::{Watch, WatchRequest};
use crate::{Request, Shared};

/// A watch's `timeoutSeconds` when the client sends none.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a watch stays open, whatever the client asks.
const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let path = uri.path();
    let response = match shared.injected_failure(method.as_str(), path) {
        Some(error) => error_response(&error),
        None => route(&shared, &method, &uri, content_type.as_deref(), &body)
            .unwrap_or_else(|error| error_response(&error)),
    };
    shared.record(Request {
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
        status: response.status().as_u16(),
    });
    response
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let params = Params::parse(uri)?;
    if params.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by fake-kube",
        ));
    }
    if uri.path() == "/version" {
        return match *method {
            Method::GET => Ok(ok(&version())),
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        };
    }
    let target = parse_path(uri.path()).ok_or_else(ApiError::path_not_found)?;
    let not_allowed = || ApiError::method_not_allowed(method.as_str());
    match target {
        Target::Collection { resource, scope } => match *method {
            Method::GET if params.flag("watch") => watch(shared, resource, scope, &params),
            Method::GET => list(shared, &resource, &scope, &params),
            Method::POST => match scope {
                Scope::Namespace(namespace) => create(shared, resource, namespace, body),
                Scope::All => Err(not_allowed()),
            },
            Method::DELETE => delete_collection(shared, &resource, &scope, &params),
            _ => Err(not_allowed()),
        },
        Target::Object {
            collection,
            name,
            subresource: None,
        } => {
            let mut store = shared.store.lock();
            match *method {
                Method::GET => store
                    .get(&collection, &name)
                    .map(ok)
                    .ok_or_else(|| ApiError::not_found(&collection.resource, &name)),
                Method::PUT => Ok(ok(&store.update(&collection, &name, parse_json(body)?)?)),
                Method::PATCH => {
                    let kind = PatchKind::from_content_type(content_type)
                        .map_err(|e| patch_error(e, &collection.resource, &name))?;
                    let current = store
                        .get(&collection, &name)
                        .ok_or_else(|| ApiError::not_found(&collection.resource, &name))?;
                    let patched = patch::apply(kind, current, body)
                        .map_err(|e| patch_error(e, &collection.resource, &name))?;
                    Ok(ok(&store.update(&collection, &name, patched)?))
                }
                Method::DELETE => {
                    let preconditions = delete_options(body)?;
                    Ok(ok(&store.delete(&collection, &name, &preconditions)?))
                }
                _ => Err(not_allowed()),
            }
        }
        Target::Object {
            collection,
            name,
            subresource: Some(subresource),
        } => {
            let requested = match *method {
                Method::GET => None,
                Method::PUT => Some(Requested::Replace),
                Method::PATCH => Some(Requested::Patch(
                    PatchKind::from_content_type(content_type)
                        .map_err(|e| patch_error(e, &collection.resource, &name))?,
                )),
                _ => return Err(not_allowed()),
            };
            match subresource.as_str() {
                "scale" if scale::scalable(&collection.resource) => {
                    scale_subresource(shared, &collection, &name, requested, body)
                }
                "status" => status_subresource(shared, &collection, &name, requested, body),
                _ => Err(ApiError::path_not_found()),
            }
        }
    }
}

/// A write to a subresource.
enum Requested {
    Replace,
    Patch(PatchKind),
}

fn list(
    shared: &Shared,
    resource: &Resource,
    scope: &Scope,
    params: &Params,
) -> Result<Response, ApiError> {
    let (labels, fields) = params.selectors()?;
    let store = shared.store.lock();
    let items: Vec<Value> = store
        .list(resource, scope)
        .into_iter()
        .filter(|object| labels.matches(object) && fields.matches(object))
        .collect();
    Ok(ok(&json!({
        "apiVersion": resource.api_version(),
        "kind": resource.list_kind(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": items,
    })))
}

fn watch(
    shared: &Arc<Shared>,
    resource: Resource,
    scope: Scope,
    params: &Params,
) -> Result<Response, ApiError> {
    let (labels, fields) = params.selectors()?;
    let send_initial_events = params.get("sendInitialEvents").map(is_true);
    let since = match (params.get("resourceVersion"), send_initial_events) {
        (_, Some(true)) => Since::Snapshot,
        (None | Some("" | "0"), Some(false)) => Since::Now,
        (None | Some("" | "0"), None) => Since::Snapshot,
        (Some(version), _) => Since::After(version.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid resource version: {version:?}"))
        })?),
    };
    let timeout =
        match params.get("timeoutSeconds") {
            None | Some("" | "0") => DEFAULT_WATCH_TIMEOUT,
            Some(seconds) => Duration::from_secs(seconds.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds: {seconds:?}"))
            })?),
        }
        .min(MAX_WATCH_TIMEOUT);
    let watch = Watch::start(
        shared.clone(),
        WatchRequest {
            resource,
            scope,
            since,
            labels,
            fields,
            timeout,
            bookmarks: params.flag("allowWatchBookmarks"),
            send_initial_events: send_initial_events == Some(true),
        },
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        watch.into_body(),
    )
        .into_response())
}

fn create(
    shared: &Shared,
    resource: Resource,
    namespace: String,
    body: &[u8],
) -> Result<Response, ApiError> {
    let collection = Collection {
        resource,
        namespace,
    };
    let created = shared.store.lock().create(&collection, parse_json(body)?)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// DELETE on a collection (`Api::delete_collection`): every selected object, each its own
/// write and DELETED event; the answer lists them.
fn delete_collection(
    shared: &Shared,
    resource: &Resource,
    scope: &Scope,
    params: &Params,
) -> Result<Response, ApiError> {
    let (labels, fields) = params.selectors()?;
    let mut store = shared.store.lock();
    let doomed: Vec<(Collection, String)> = store
        .list(resource, scope)
        .iter()
        .filter(|object| labels.matches(object) && fields.matches(object))
        .filter_map(|object| {
            let meta = object.get("metadata")?;
            let collection = Collection {
                resource: resource.clone(),
                namespace: meta.get("namespace")?.as_str()?.to_owned(),
            };
            Some((collection, meta.get("name")?.as_str()?.to_owned()))
        })
        .collect();
    let mut items = Vec::new();
    for (collection, name) in doomed {
        items.push(store.delete(&collection, &name, &Preconditions::default())?);
    }
    Ok(ok(&json!({
        "apiVersion": resource.api_version(),
        "kind": resource.list_kind(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": items,
    })))
}

fn scale_subresource(
    shared: &Shared,
    collection: &Collection,
    name: &str,
    requested: Option<Requested>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let resource = &collection.resource;
    let mut store = shared.store.lock();
    let workload = store
        .get(collection, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let current = scale::of(workload);
    let wanted = match requested {
        None => return Ok(ok(&current)),
        Some(Requested::Replace) => parse_json(body)?,
        Some(Requested::Patch(kind)) => {
            patch::apply(kind, &current, body).map_err(|e| patch_error(e, resource, name))?
        }
    };
    let proposed = scale::apply_to(workload, &wanted, resource, name)?;
    let updated = store.update(collection, name, proposed)?;
    Ok(ok(&scale::of(&updated)))
}

/// The `status` subresource: the object, of which a write changes only `status` (a
/// resourceVersion in the body is still a precondition).
fn status_subresource(
    shared: &Shared,
    collection: &Collection,
    name: &str,
    requested: Option<Requested>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let resource = &collection.resource;
    let mut store = shared.store.lock();
    let current = store
        .get(collection, name)
        .ok_or_else(|| ApiError::not_found(resource, name))?;
    let wanted = match requested {
        None => return Ok(ok(current)),
        Some(Requested::Replace) => parse_json(body)?,
        Some(Requested::Patch(kind)) => {
            patch::apply(kind, current, body).map_err(|e| patch_error(e, resource, name))?
        }
    };
    let mut proposed = current.clone();
    if let Some(fields) = proposed.as_object_mut() {
        match wanted.get("status") {
            Some(status) => fields.insert("status".into(), status.clone()),
            None => fields.remove("status"),
        };
    }
    let precondition = wanted.pointer("/metadata/resourceVersion").cloned();
    if let Some(meta) = proposed.get_mut("metadata").and_then(Value::as_object_mut) {
        match precondition {
            Some(version) => meta.insert("resourceVersion".into(), version),
            None => meta.remove("resourceVersion"),
        };
    }
    Ok(ok(&store.update(collection, name, proposed)?))
}

/// `DeleteOptions`, when the client sends one.
fn delete_options(body: &[u8]) -> Result<Preconditions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let options = parse_json(body)?;
    if options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|modes| !modes.is_empty())
    {
        return Err(ApiError::bad_request(
            "dryRun is not supported by fake-kube",
        ));
    }
    // `propagationPolicy`, `gracePeriodSeconds` and `orphanDependents` are accepted and
    // ignored: deletion is immediate and nothing owns anything here.
    let precondition = |field: &str| {
        options
            .get("preconditions")?
            .get(field)?
            .as_str()
            .map(str::to_owned)
    };
    Ok(Preconditions {
        resource_version: precondition("resourceVersion"),
        uid: precondition("uid"),
    })
}

fn patch_error(error: PatchError, resource: &Resource, name: &str) -> ApiError {
    match error {
        PatchError::Malformed(message) => ApiError::bad_request(message),
        PatchError::Failed(message) => ApiError::invalid(resource, name, &message),
        PatchError::ServerSideApply | PatchError::UnsupportedMediaType(_) => {
            ApiError::unsupported_media_type(error.to_string())
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request is not JSON (fake-kube takes no YAML): {e}"
        ))
    })
}

fn ok(value: &Value) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}

pub(crate) fn error_response(error: &ApiError) -> Response {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(error.status())).into_response()
}

/// What `/version` answers (`Client::apiserver_version`).
fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake-kube",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "",
        "platform": "linux/amd64",
    })
}

fn is_true(value: &str) -> bool {
    matches!(value, "true" | "1")
}

/// The query string's parameters (the first of a repeated one wins). `limit` and
/// `continue` are accepted and ignored: a list answers everything, with no continue token.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(uri: &Uri) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(is_true)
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let invalid = |e: crate::selector::SelectorError| ApiError::bad_request(e.to_string());
        let labels =
            LabelSelector::parse(self.get("labelSelector").unwrap_or_default()).map_err(invalid)?;
        let fields =
            FieldSelector::parse(self.get("fieldSelector").unwrap_or_default()).map_err(invalid)?;
        Ok((labels, fields))
    }
}
