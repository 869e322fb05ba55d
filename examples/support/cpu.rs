//! CPU time of this process's threads, from `/proc/self/task/*/schedstat` (nanoseconds, every
//! thread, kernel and user). Shared by `examples/idle_clock.rs` and `examples/loadtest.rs`
//! (included with `#[path]`). Linux only; elsewhere it reads 0.

/// CPU nanoseconds used so far by this process's threads whose name starts with `prefix`
/// (`""`: every thread).
pub fn thread_cpu_ns(prefix: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if !prefix.is_empty() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
        }
        let s = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += s
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}
