//! The delivery side of an instance runs on a Tokio runtime of its own: the claim loop, the
//! hand-overs from the publisher, every HTTP request to a destination, and the completion
//! writer. The API — GraphQL, `publishEvent`'s group commits, live streams — keeps the
//! process's main runtime.
//!
//! On one runtime, a publish's tasks wait in the same run queues as the delivery tasks ready
//! at that moment; under a fan-out there are thousands of those (a request and a connection
//! task per delivery), so accepting an event would wait behind sending the previous ones. With
//! two runtimes the operating system shares the cores between their threads, and the API's
//! short queue is served at once: in the `fanout` benchmark on PostgreSQL this takes about a
//! third off `publishEvent`'s p50, with deliveries/s within the machine's noise (BENCHMARKS.md,
//! "Deliveries run on a runtime of their own"). Deliveries still use every core the API leaves
//! idle.

use tokio::runtime::{Builder, Handle, Runtime};

pub struct DeliveryRuntime {
    /// Taken on drop (see there).
    rt: Option<Runtime>,
    handle: Handle,
}

impl DeliveryRuntime {
    /// As many worker threads as the main runtime: one per core.
    pub fn new() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let rt = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("hookline-delivery")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        Ok(Self {
            rt: Some(rt),
            handle,
        })
    }

    /// Where the delivery tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for DeliveryRuntime {
    /// The last holder may be a task of either runtime, where a blocking shutdown would panic:
    /// the runtime's threads are told to stop and left to finish on their own. By then the
    /// dispatcher has drained and the database pool is closed (`server::serve`).
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn spawned_work_runs_on_the_delivery_threads() {
        let rt = DeliveryRuntime::new().unwrap();
        let name = rt
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("hookline-delivery"));
        assert_ne!(
            std::thread::current().name(),
            Some("hookline-delivery"),
            "the test itself runs on another runtime"
        );
    }

    /// Dropping a `Runtime` in async code panics ("Cannot drop a runtime in a context where
    /// blocking is not allowed"); the last `AppState` may well be dropped there, or by a task
    /// of the delivery runtime itself.
    #[tokio::test]
    async fn dropping_it_from_async_code_or_from_its_own_task_is_safe() {
        let rt = DeliveryRuntime::new().unwrap();
        rt.handle().spawn(async {}).await.unwrap();
        drop(rt);

        let rt = Arc::new(DeliveryRuntime::new().unwrap());
        let handle = rt.handle().clone();
        let last_holder = handle.spawn(async move {
            let last = rt;
            let refs = Arc::strong_count(&last);
            drop(last);
            refs
        });
        assert_eq!(
            last_holder
                .await
                .expect("the task finished without panicking"),
            1,
            "the task held the last reference"
        );
    }
}
