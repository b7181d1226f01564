//! The machine around the bench: file-descriptor limit, ephemeral ports,
//! and /proc sampling of the server under test (RSS and CPU of a process
//! and its descendants), of the bench itself and of the load average.

use anyhow::bail;
use rlimit::Resource;

/// Descriptors beyond one per connection (NATS, HTTP lanes, stdio, …).
const SPARE_FDS: u64 = 256;

/// Makes sure `conns` sockets fit under RLIMIT_NOFILE: raises the soft limit
/// to the hard one if needed, or explains what to do. Returns the limit.
pub fn ensure_nofile(conns: usize) -> anyhow::Result<u64> {
    let need = (conns as u64).saturating_add(SPARE_FDS);
    let (soft, hard) =
        rlimit::getrlimit(Resource::NOFILE).map_err(|e| anyhow::anyhow!("cannot read RLIMIT_NOFILE: {e}"))?;
    if soft >= need {
        return Ok(soft);
    }
    if hard < need {
        bail!(
            "{conns} connections need about {need} file descriptors, but the hard limit (RLIMIT_NOFILE) is {hard}: \
             raise it (`ulimit -Hn {need}` as root, LimitNOFILE= in a systemd unit, nofile in \
             /etc/security/limits.conf) or use fewer --conns"
        );
    }
    rlimit::setrlimit(Resource::NOFILE, hard, hard)
        .map_err(|e| anyhow::anyhow!("cannot raise the soft RLIMIT_NOFILE from {soft} to {hard}: {e}"))?;
    Ok(hard)
}

/// A warning when `conns` may exhaust the local ephemeral ports towards one
/// server address (each source address has its own range).
pub fn ephemeral_port_warning(conns: usize, src_ips: usize) -> Option<String> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = range.split_whitespace().filter_map(|x| x.parse::<usize>().ok());
    let (lo, hi) = (it.next()?, it.next()?);
    let ports = hi.checked_sub(lo)? + 1;
    let capacity = ports * src_ips.max(1);
    (conns > capacity * 9 / 10).then(|| {
        format!(
            "{conns} connections from {} source address(es) with {ports} ephemeral ports each ({lo}-{hi}): \
             connects may fail with EADDRNOTAVAIL; spread them with --src-ips 127.0.0.2,127.0.0.3,… \
             or widen net.ipv4.ip_local_port_range",
            src_ips.max(1)
        )
    })
}

/// `pid` and all its descendants.
fn proc_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", out[i])) {
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
                }
            }
        }
        i += 1;
    }
    out
}

/// VmRSS in KiB of `pid` and its descendants; `None` without a pid or when
/// the process is gone.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let mut total = None;
    for p in proc_tree(pid?) {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) else { continue };
        let kib = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u64>().ok());
        if let Some(k) = kib {
            total = Some(total.unwrap_or(0) + k);
        }
    }
    total
}

/// utime + stime in clock ticks of one process.
fn ticks_of(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime, stime are 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks used so far by `pid` and its descendants.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    Some(proc_tree(pid?).iter().filter_map(|p| ticks_of(&format!("/proc/{p}/stat"))).sum())
}

/// CPU ticks used so far by the bench.
pub fn self_ticks() -> Option<u64> {
    ticks_of("/proc/self/stat")
}

/// Nanoseconds the threads of `pid` and its descendants spent runnable but
/// waiting for a CPU (schedstat `run_delay`): on a shared machine, how much
/// other load got in the way of what was measured.
pub fn sched_wait_ns(pid: u32) -> Option<u64> {
    let mut total = None;
    for p in proc_tree(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
            if let Some(ns) = s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()) {
                total = Some(total.unwrap_or(0) + ns);
            }
        }
    }
    total
}

/// Share of `secs` (percent, summed over threads) spent waiting for a CPU
/// between two [`sched_wait_ns`] samples.
pub fn wait_pct(before: Option<u64>, after: Option<u64>, secs: f64) -> Option<f64> {
    let (a, b) = (before?, after?);
    (secs > 0.0).then(|| (b.saturating_sub(a) as f64 / 1e9 / secs * 1000.0).round() / 10.0)
}

/// Clock ticks per second (USER_HZ, 100 on Linux).
const TICK_HZ: f64 = 100.0;

/// Percent of one core used between two tick samples over `secs`.
pub fn cpu_pct(before: Option<u64>, after: Option<u64>, secs: f64) -> Option<f64> {
    let (a, b) = (before?, after?);
    (secs > 0.0).then(|| (b.saturating_sub(a) as f64 / TICK_HZ / secs * 1000.0).round() / 10.0)
}

/// 1, 5 and 15 minute load averages: the figures are only as quiet as the
/// machine was.
pub fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = s.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    Some([*v.first()?, *v.get(1)?, *v.get(2)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        assert!(rss_kib(Some(me)).is_some_and(|k| k > 0));
        assert!(cpu_ticks(Some(me)).is_some());
        assert!(sched_wait_ns(me).is_some());
        assert_eq!(wait_pct(Some(0), Some(500_000_000), 1.0), Some(50.0));
        assert_eq!(rss_kib(None), None);
        assert!(loadavg().is_some());
        assert_eq!(cpu_pct(Some(100), Some(150), 1.0), Some(50.0));
    }

    #[test]
    fn nofile_is_enough_for_a_few_and_refused_past_the_hard_limit() {
        assert!(ensure_nofile(10).is_ok());
        let hard = rlimit::getrlimit(Resource::NOFILE).map_or(u64::MAX, |l| l.1);
        if hard < u64::MAX / 4 {
            let err = ensure_nofile(usize::MAX / 4).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("hard limit"), "{err}");
        }
    }
}
