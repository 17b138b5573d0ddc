//! The status view and its API on a thread of their own, for `wellspring demo --serve`:
//! the view reads the log and the API answers during the run and after it, until the
//! server is stopped (the demo's actor system may be long gone by then).

use std::net::SocketAddr;
use std::sync::Arc;

use wellspring_actors::metrics::Metrics;
use wellspring_log::Log;
use wellspring_protocol::Dag;

use super::StatusView;

/// The view and the status API, running.
pub struct StatusServer {
    pub addr: SocketAddr,
    pub view: StatusView,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for StatusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why the status server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: {source} (is something else serving there? choose another --http-addr)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the status server: {0}")]
    Start(std::io::Error),
}

impl StatusServer {
    /// Binds `addr`, then reads `log` for `dags` and serves the status API there.
    pub fn start(
        addr: SocketAddr,
        dags: Vec<Dag>,
        node_id: &str,
        metrics: Metrics,
        log: Arc<dyn Log>,
        token: Option<String>,
    ) -> Result<StatusServer, ServeError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::Listen { addr, source })?;
        listener.set_nonblocking(true).map_err(ServeError::Start)?;
        let addr = listener.local_addr().map_err(ServeError::Start)?;
        let view = StatusView::new(&dags, node_id, metrics, super::Limits::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router =
            // No redrive here: the demo's stages stop when its run ends, so nothing would
            // read what a redrive sent.
            crate::api::status::router(view.clone(), None, None, token, crate::api::DEFAULT_BODY_LIMIT).merge(
                crate::api::ui::routes(crate::api::ui::Served {
                    task_store: false,
                    redrive: false,
                }),
            );
        let reader = view.clone();
        let client_id = format!("wellspring-status-{node_id}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Start)?;
        let thread = std::thread::Builder::new()
            .name("status-server".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    // The log's consumers are not Send: the reader runs on this thread.
                    tokio::task::spawn_local(super::reader::run(reader, log, client_id));
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        tracing::error!("the status server cannot use its socket");
                        return;
                    };
                    let served = axum::serve(listener, router)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!("the status server stopped: {e}");
                    }
                });
            })
            .map_err(ServeError::Start)?;
        Ok(StatusServer {
            addr,
            view,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and reading.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.view.stop();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.finish();
    }
}
