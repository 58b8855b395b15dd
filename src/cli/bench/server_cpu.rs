//! CPU time of a broker process on this machine, read from `/proc/<pid>/stat`,
//! so that a benchmark can report CPU-seconds per GB it moved.

use anyhow::{bail, Context};

/// A process whose CPU time (user + system, over all its threads) can be sampled.
#[derive(Debug)]
pub struct ProcessCpu {
    pid: u32,
    ticks_per_second: f64,
}

impl ProcessCpu {
    /// The process `pid`, which must exist and be readable.
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        // SAFETY: sysconf only reads a system setting; it touches no memory of ours.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            bail!("cannot learn the kernel's clock ticks per second");
        }
        let cpu = Self {
            pid,
            ticks_per_second: ticks as f64,
        };
        cpu.seconds()?;
        Ok(cpu)
    }

    /// CPU seconds the process has used so far.
    pub fn seconds(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {path}: is process {} running?", self.pid))?;
        let ticks = cpu_ticks(&stat).with_context(|| format!("cannot parse {path}"))?;
        Ok(ticks as f64 / self.ticks_per_second)
    }
}

/// utime + stime, in clock ticks, from the text of `/proc/<pid>/stat`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: fields are counted after its last ')'. Field 3
    // (state) comes first there; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_read_after_the_command_name() {
        let stat = "1234 (strata (dev) x) S 1 1234 1234 0 -1 4194560 3321 0 0 0 250 75 0 0 20 0 40 0 1 1 1";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_uses_some_cpu() {
        let cpu = ProcessCpu::new(std::process::id()).unwrap();
        let mut spin = 0u64;
        for i in 0..10_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        std::hint::black_box(spin);
        assert!(cpu.seconds().unwrap() >= 0.0);
        assert!(ProcessCpu::new(u32::MAX).is_err());
    }
}
