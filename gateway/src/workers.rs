//! Thread per core: the proxy's worker threads, each running its own current-thread tokio
//! runtime, like NGINX's worker processes.
//!
//! The control runtime accepts and hands each connection to the worker with the fewest open
//! connections (`server::Gateway::dispatch`). From then on the worker alone serves it and
//! dials and reuses its own upstream connections (see `upstream::set_worker_count`), so a
//! request never changes threads: no work-stealing hand-offs between the client connection's
//! task and the upstream connection's task, no cross-thread wake-ups. Shared state (the
//! config snapshot, balancer, metrics, limiter) is the same for all workers. The control
//! runtime also runs the admin API, health checks, reloads and HA.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Running worker threads; dropping this stops them (connections they hold are cut).
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        crate::upstream::set_worker_count(count);
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            stops: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
        };
        for index in 0..count {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    crate::upstream::enter_worker(index);
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Runs the worker's tasks until told to stop (or the sender is dropped).
                    let _ = runtime.block_on(stop_rx);
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("worker thread exited during start"))??;
            workers.handles.push(handle);
            workers.stops.push(stop_tx);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The workers' runtimes, to hand connections to.
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
