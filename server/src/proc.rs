//! The resident memory of a process, as Linux reports it (shared by the
//! server's INFO and the head-to-head harness).

/// The resident set size of process `pid` in bytes ("self" for this one),
/// from /proc/PID/statm; 0 where there is no /proc.
pub fn rss_of(pid: &str) -> usize {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a configuration value; no memory is involved.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).unwrap_or(4096)
}

/// This process's resident set size in bytes.
#[allow(dead_code)] // h2h measures other processes only
pub fn rss() -> usize {
    rss_of("self")
}
