//! The process's own series, named as Prometheus client libraries name them (`process_*`),
//! read from `/proc` (Linux; elsewhere they are absent), and the build's (`exactly_build_info`).

/// Gauge: CPU time spent, user and system, seconds (a counter in meaning: `rate()` it).
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Gauge: resident memory, bytes.
pub const RESIDENT_BYTES: &str = "process_resident_memory_bytes";
/// Gauge: virtual memory, bytes.
pub const VIRTUAL_BYTES: &str = "process_virtual_memory_bytes";
/// Gauge: open file descriptors.
pub const OPEN_FDS: &str = "process_open_fds";
/// Gauge: the limit of open file descriptors.
pub const MAX_FDS: &str = "process_max_fds";
/// Gauge: threads.
pub const THREADS: &str = "process_threads";
/// Gauge: when the process started, Unix seconds.
pub const START_TIME: &str = "process_start_time_seconds";
/// Gauge, always 1: the build, in its labels (`version`, `target`, `profile`).
pub const BUILD_INFO: &str = "exactly_build_info";

/// Records the build's series, and the start time (once, at start).
pub fn record_build() {
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "target" => std::env::consts::ARCH,
        "profile" => if cfg!(debug_assertions) { "debug" } else { "release" }
    )
    .set(1.0);
    if let Some(started) = start_time() {
        metrics::gauge!(START_TIME).set(started);
    }
}

/// Records the process's series now (every statistics interval).
pub fn record() {
    let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok() else { return };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let ticks = clock_ticks();
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        metrics::gauge!(CPU_SECONDS).set((user + system) / ticks);
    }
    if let Some(threads) = field(20) {
        metrics::gauge!(THREADS).set(threads);
    }
    if let Some(vsize) = field(23) {
        metrics::gauge!(VIRTUAL_BYTES).set(vsize);
    }
    if let Some(rss) = field(24) {
        let bytes = rss * page_size();
        metrics::gauge!(RESIDENT_BYTES).set(bytes);
        metrics::gauge!(super::metrics::PROCESS_RSS).set(bytes);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(OPEN_FDS).set(fds.count() as f64);
    }
    if let Some(max) = max_fds() {
        metrics::gauge!(MAX_FDS).set(max);
    }
}

/// The resident set size, bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((pages * page_size()) as u64)
}

fn page_size() -> f64 {
    sysconf(libc::_SC_PAGESIZE, 4096.0)
}

fn clock_ticks() -> f64 {
    sysconf(libc::_SC_CLK_TCK, 100.0)
}

/// A constant of the system (`otherwise` if it is not known).
fn sysconf(name: libc::c_int, otherwise: f64) -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let value = unsafe { libc::sysconf(name) };
    if value > 0 {
        value as f64
    } else {
        otherwise
    }
}

/// The soft limit of open files.
fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// When the process started, Unix seconds: the boot time plus its start in clock ticks.
fn start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(22 - 3)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))?;
    Some(boot + ticks / clock_ticks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_itself() {
        let rss = resident_bytes().unwrap();
        assert!(rss > 1_000_000, "{rss}");
        let started = start_time().unwrap();
        let now = super::super::metrics::unix_now();
        assert!(started <= now + 1.0 && started > now - 3_600.0, "{started} vs {now}");
        assert!(max_fds().unwrap() >= 64.0);
    }
}
