//! A static HTTP file server on the host's loopback, serving one directory (tower-http's
//! `ServeDir`: streamed bodies, 404 for what is missing), like the plain web server a release
//! or an Ignition config is published on. It records each request's path and status, so a
//! test can assert what a client fetched. It stops when dropped.

use std::path::Path;
use std::sync::{Arc, Mutex};

/// A running file server.
pub struct FileServer {
    port: u16,
    seen: Arc<Mutex<Vec<(String, u16)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl FileServer {
    /// Serves `root` on a free loopback port.
    pub fn start(root: &Path) -> FileServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("file server runtime");
        let seen: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new()
            .fallback_service(tower_http::services::ServeDir::new(root))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let record = record.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let response = next.run(request).await;
                        record
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((path, response.status().as_u16()));
                        response
                    }
                },
            ));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the file server");
        let port = listener.local_addr().expect("file server address").port();
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("file server");
        });
        FileServer {
            port,
            seen,
            _runtime: runtime,
        }
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The statuses answered for `path`, in order.
    pub fn statuses_for(&self, path: &str) -> Vec<u16> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, status)| *status)
            .collect()
    }
}
