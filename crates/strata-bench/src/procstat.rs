//! Server CPU time from `/proc/<pid>/stat` and the load average.

use std::collections::{HashMap, HashSet};

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/<pid>/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// utime + stime + cutime + cstime, in clock ticks.
    pub ticks: u64,
}

/// Parses one `/proc/<pid>/stat` line (the command name may hold spaces and parentheses).
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let num = |i: usize| f.get(i)?.parse::<i64>().ok();
    let ticks = num(11)? + num(12)? + num(13)?.max(0) + num(14)?.max(0);
    Some(Stat {
        ppid: num(1)? as u32,
        ticks: ticks.max(0) as u64,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every live process: pid -> stat.
fn all_stats() -> HashMap<u32, Stat> {
    let mut out = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some(s) = read_stat(pid) {
                    out.insert(pid, s);
                }
            }
        }
    }
    out
}

/// The given PIDs and all their live descendants.
pub fn with_descendants(roots: &[u32]) -> Vec<u32> {
    let stats = all_stats();
    let mut set: HashSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| stats.contains_key(p))
        .collect();
    loop {
        let before = set.len();
        for (pid, s) in &stats {
            if set.contains(&s.ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    let mut v: Vec<u32> = set.into_iter().collect();
    v.sort_unstable();
    v
}

/// Per-process CPU ticks of a process tree, so a delta only counts processes alive at
/// both ends (plus what reaped children left in their parents' cutime/cstime).
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    ticks: HashMap<u32, u64>,
}

impl CpuSample {
    pub fn take(roots: &[u32]) -> Self {
        let ticks = with_descendants(roots)
            .into_iter()
            .filter_map(|p| Some((p, read_stat(p)?.ticks)))
            .collect();
        Self { ticks }
    }

    /// CPU seconds spent between `self` and `later`. A process born in between counts
    /// from zero.
    pub fn seconds_until(&self, later: &CpuSample) -> f64 {
        let t: u64 = later
            .ticks
            .iter()
            .map(|(p, t)| t.saturating_sub(self.ticks.get(p).copied().unwrap_or(0)))
            .sum();
        t as f64 / ticks_per_second()
    }
}

/// CPU seconds this process has used (all threads).
pub fn self_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|l| parse_stat(&l))
        .map(|s| s.ticks as f64 / ticks_per_second())
        .unwrap_or(0.0)
}

/// The 1-minute load average.
pub fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces() {
        let line =
            "1234 (swift (proxy) x) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 3 2 20 0 1 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 77,
                ticks: 305
            })
        );
    }

    #[test]
    fn self_is_visible() {
        let me = std::process::id();
        assert!(with_descendants(&[me]).contains(&me));
        let a = CpuSample::take(&[me]);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = CpuSample::take(&[me]);
        assert!(a.seconds_until(&b) >= 0.0);
        assert!(loadavg_1m() >= 0.0);
    }
}
