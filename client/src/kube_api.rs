//! The process's one connection to the Kubernetes API: one Tokio runtime and one kube [`Client`], shared by the
//! watches, the status and Event writes, and the leader election (so they share one connection pool, one
//! token refresh and one set of TLS settings). Everything else in the client is plain threads.

use kube::Client;
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};

/// Longest one API call of the leader election may take before it counts as failed: a connection that died
/// without a reset (a cut network) must not hold the renewal loop for the client's 295 s read timeout.
pub const CALL_LIMIT: Duration = Duration::from_secs(5);

/// The runtime and the client. Dropping it stops every task on the runtime.
pub struct KubeApi {
    runtime: Runtime,
    client: Client,
}

impl KubeApi {
    /// Starts the runtime (two worker threads) and builds the client from the in-cluster service account or
    /// `KUBECONFIG`.
    pub fn connect() -> Result<KubeApi, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Kubernetes API runtime: {e}"))?;
        let client = runtime
            .block_on(Client::try_default())
            .map_err(|e| format!("no Kubernetes API: {e} (in-cluster service account or KUBECONFIG)"))?;
        Ok(KubeApi { runtime, client })
    }

    /// The shared client (a cheap handle).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Where to spawn API work.
    pub fn handle(&self) -> Handle {
        self.runtime.handle().clone()
    }
}
