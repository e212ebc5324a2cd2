//! A background task that is told to stop and waited for.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Cheap to clone; any clone can stop it.
#[derive(Debug, Clone)]
pub(crate) struct BackgroundTask {
    stop: CancellationToken,
    handle: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl BackgroundTask {
    /// Spawns `run(stop)` on the current runtime; `run` ends its future
    /// once `stop` is cancelled.
    pub(crate) fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(stop.clone()));
        Self {
            stop,
            handle: Arc::new(Mutex::new(Some(handle))),
        }
    }

    /// Tells the task to stop and waits until it has.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let handle = self.handle.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}
