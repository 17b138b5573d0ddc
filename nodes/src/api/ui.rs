//! The web UI: static files (`nodes/ui/`) compiled into the binary and served at `/` and
//! `/ui/...`, open without the token (the page asks for one and sends it on its API
//! calls), so a node in an air-gapped cluster serves its dashboard with nothing else
//! installed.
//!
//! Every answer carries its content type, `Cache-Control: no-cache` and a strong `ETag`
//! (a hash of the file and the binary's version): the browser revalidates each load and
//! gets `304` while the binary is the same, and never runs an old script against a new
//! API after an upgrade. The page's Content-Security-Policy allows this node only.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Where the index page is served, and the prefix of every other file.
pub const INDEX: &str = "/";
pub const ASSETS: &str = "/ui/{*path}";

/// One file of the UI.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../../ui/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the UI; `index.html` is served at [`INDEX`], the others under `/ui/`.
const FILES: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/dag.js", JS),
    asset!("js/experiments.js", JS),
    asset!("js/plate.js", JS),
    asset!("js/well.js", JS),
    asset!("js/dead-letters.js", JS),
    asset!("js/tasks.js", JS),
];

/// Scripts, styles, images and API calls from this node only; no frames, no plugins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// What the node serving the UI serves besides the status API, so that the page shows
/// only views that have data (`demo --serve` runs no task store) without probing for them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Served {
    pub task_store: bool,
    /// Whether `POST /api/dead-letters/redrive` is served (a node; not `demo --serve`).
    pub redrive: bool,
}

/// Where the page reads [`Served`] (open, like the page: it holds no data).
pub const SERVED: &str = "/ui/served.json";

/// The UI's routes, for any router (the node's API, `demo --serve`): outside the token
/// check, since the page itself carries no data.
pub fn routes<S: Clone + Send + Sync + 'static>(served: Served) -> Router<S> {
    Router::new()
        .route(INDEX, get(index))
        .route(SERVED, get(move || async move { axum::Json(served) }))
        .route(ASSETS, get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some((index, asset)) = FILES.iter().enumerate().find(|(_, a)| a.path == path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such file in the UI",
        )
            .into_response();
    };
    let etag = &etags()[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag.as_str()));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.path == "index.html" {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// One ETag per file, in the order of [`FILES`]: FNV-1a over the version and the bytes
/// (stable across runs of the same binary, unlike a randomly seeded hasher).
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|asset| {
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                let version = env!("CARGO_PKG_VERSION").as_bytes();
                for byte in version.iter().chain(asset.body) {
                    hash ^= u64::from(*byte);
                    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                }
                format!("\"{hash:016x}\"")
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_its_own_etag_and_the_index_links_only_files_that_exist() {
        let tags = etags();
        let mut unique = tags.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), FILES.len());
        let index = std::str::from_utf8(FILES[0].body).unwrap_or_default();
        for link in index.split("\"/ui/").skip(1) {
            let path = link.split('"').next().unwrap_or_default();
            assert!(
                FILES.iter().any(|a| a.path == path),
                "index.html links /ui/{path}, which is not served"
            );
        }
    }

    #[test]
    fn every_module_a_script_imports_is_served() {
        for asset in FILES.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).unwrap_or_default();
            for import in text.split("from \"./").skip(1) {
                let name = import.split('"').next().unwrap_or_default();
                let path = format!("js/{name}");
                assert!(
                    FILES.iter().any(|a| a.path == path),
                    "{} imports {path}, which is not served",
                    asset.path
                );
            }
        }
    }
}
