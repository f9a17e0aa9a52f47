//! What the benchmarks share: a closed-loop load generator over loopback.

use std::time::{Duration, Instant};

/// Seconds each measured load lasts.
pub const SECONDS: u64 = 5;

/// Requests made by `concurrency` clients for `SECONDS`, each a call of `request(i)`: how many
/// per second, and the latency percentiles.
pub async fn load<F, Fut>(concurrency: usize, request: F) -> (f64, Duration, Duration)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while Instant::now() < deadline {
                let t = Instant::now();
                assert!(request(i).await, "a request failed");
                latencies.push(t.elapsed());
                i += concurrency;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (latencies.len() as f64 / elapsed, at(0.50), at(0.99))
}
