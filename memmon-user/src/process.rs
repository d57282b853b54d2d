//! What /proc says about a target process: that it exists and can be traced, its name, and its
//! memory as the kernel accounts it.

use std::{fs, io, path::PathBuf};

use anyhow::{Result, bail};

/// `PF_KTHREAD` from the kernel's `include/linux/sched.h` (the `flags` field of /proc/PID/stat).
const PF_KTHREAD: u64 = 0x0020_0000;

/// A user process memmon may attach to. A pid names it only while it runs: once it has
/// exited, the kernel may give the pid to a new process, which `started` tells apart.
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    /// When it started (clock ticks after boot, /proc/PID/stat field 22): with the pid, its
    /// identity. An execve keeps it (same process, new image).
    pub started: u64,
}

impl Process {
    /// Checks that `pid` names a live user process, with errors an operator can act on.
    pub fn open(pid: u32) -> Result<Self> {
        if pid == 0 {
            bail!("pid 0 is not a process; pass the pid of a running program (see `ps`)");
        }
        let stat = match fs::read_to_string(proc_path(pid, "stat")) {
            Ok(stat) => stat,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                bail!("no process with pid {pid}; check the pid with `ps -p {pid}`")
            }
            Err(err) => bail!("cannot read /proc/{pid}/stat: {err}"),
        };
        let stat = Stat::parse(&stat)
            .ok_or_else(|| anyhow::anyhow!("cannot parse /proc/{pid}/stat"))?;
        if stat.flags & PF_KTHREAD != 0 {
            bail!(
                "pid {pid} ({}) is a kernel thread, which has no user-space allocator; \
                 pass the pid of a user program",
                stat.comm
            );
        }
        if stat.state == 'Z' || stat.state == 'X' {
            bail!("pid {pid} ({}) has exited (it is a zombie); nothing left to trace", stat.comm);
        }
        Ok(Self { pid, comm: stat.comm, started: stat.started })
    }

    /// Whether the process still runs (a zombie counts as gone, and so does a new process that
    /// was given its pid).
    pub fn is_alive(&self) -> bool {
        match fs::read_to_string(proc_path(self.pid, "stat")) {
            Ok(stat) => Stat::parse(&stat).is_some_and(|s| s.state != 'Z' && s.state != 'X' && s.started == self.started),
            Err(_) => false,
        }
    }

    /// Whether it has exited or its main thread is exiting (`PF_EXITING`: its memory may be
    /// gone already while /proc still lists it as running). Of a single-threaded process, that
    /// it is ending; a multi-threaded one whose main thread left early also reads as exiting.
    pub fn exiting(&self) -> bool {
        const PF_EXITING: u64 = 0x4;
        match fs::read_to_string(proc_path(self.pid, "stat")) {
            Ok(stat) => Stat::parse(&stat).is_none_or(|s| s.state == 'Z' || s.state == 'X' || s.started != self.started || s.flags & PF_EXITING != 0),
            Err(_) => true,
        }
    }

    /// The process again, as /proc shows it now (a new name after an execve); an error if it
    /// has exited or its pid now names another process.
    pub fn reopen(&self) -> Result<Self> {
        let now = Self::open(self.pid)?;
        if now.started != self.started {
            bail!("pid {} (was {}) has exited; the pid now names another process ({})", self.pid, self.comm, now.comm);
        }
        Ok(now)
    }

    pub fn path(&self, entry: &str) -> PathBuf {
        proc_path(self.pid, entry)
    }

    /// A file as the target sees it (through its mount namespace, so containers work).
    pub fn root_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid, path))
    }

    pub fn memory(&self) -> Option<MemoryStatus> {
        fs::read_to_string(self.path("status")).ok().map(|s| MemoryStatus::parse(&s))
    }

    /// CPU time the process used so far, user and system (ns; /proc's clock-tick resolution).
    pub fn cpu_time_ns(&self) -> Option<u64> {
        let stat = fs::read_to_string(self.path("stat")).ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(cpu_ticks(&stat)? * (1_000_000_000 / ticks_per_second))
    }
}

impl Process {
    /// The CPU time the process used per second of its life so far (ns/s).
    pub fn lifetime_cpu_rate(&self) -> Option<f64> {
        let stat = fs::read_to_string(self.path("stat")).ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let started = start_ticks(&stat)? as f64 / ticks_per_second;
        let uptime: f64 = fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
        let cpu = cpu_ticks(&stat)? as f64 / ticks_per_second;
        let age = (uptime - started).max(0.01);
        Some(cpu / age * 1e9)
    }
}

/// When the process started (field 22 of /proc/PID/stat), in clock ticks after boot.
fn start_ticks(stat: &str) -> Option<u64> {
    stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat), in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The brk heap: where it starts (`start_brk`) and ends (the program break).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapExtent {
    pub start: u64,
    pub end: u64,
}

impl Process {
    /// The brk heap now: `start_brk` from /proc/PID/stat (field 47), and the end of the [heap]
    /// segment from /proc/PID/maps (the break rounded up to a page; the start if none yet).
    pub fn heap_extent(&self) -> HeapExtent {
        let start = fs::read_to_string(self.path("stat"))
            .ok()
            .and_then(|stat| {
                let fields = stat.get(stat.rfind(')')? + 1..)?.to_string();
                fields.split_whitespace().nth(47 - 3)?.parse().ok()
            })
            .unwrap_or(0);
        let maps = fs::read_to_string(self.path("maps")).unwrap_or_default();
        let end = maps
            .lines()
            .find(|line| line.ends_with("[heap]"))
            .and_then(|line| {
                let (_, end) = line.split_whitespace().next()?.split_once('-')?;
                u64::from_str_radix(end, 16).ok()
            })
            .unwrap_or(start);
        HeapExtent { start, end }
    }
}

fn proc_path(pid: u32, entry: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{entry}"))
}

struct Stat {
    comm: String,
    state: char,
    flags: u64,
    started: u64,
}

impl Stat {
    /// Fields of /proc/PID/stat; comm is in parentheses and may itself contain spaces or ')'.
    fn parse(line: &str) -> Option<Self> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let comm = line.get(open + 1..close)?.to_string();
        let mut rest = line.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        // After state: ppid pgrp session tty_nr tpgid, then flags.
        let flags = rest.nth(5)?.parse().ok()?;
        let started = start_ticks(line).unwrap_or(0);
        Some(Self { comm, state, flags, started })
    }
}

/// The kernel's view of a process' memory, from /proc/PID/status (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStatus {
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl MemoryStatus {
    pub fn parse(status: &str) -> Self {
        let mut memory = Self::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let kib = || -> u64 {
                value.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024
            };
            match key {
                "VmRSS" => memory.rss_bytes = kib(),
                "VmSize" => memory.virtual_bytes = kib(),
                "VmHWM" => memory.peak_rss_bytes = kib(),
                _ => {}
            }
        }
        memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_comm() {
        let stat = Stat::parse("42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0").unwrap();
        assert_eq!(stat.comm, "a) b (c");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.flags, 4194560);
    }

    #[test]
    fn cpu_ticks_are_user_plus_system() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(start_ticks(stat), Some(100));
    }

    #[test]
    fn kernel_thread_flag() {
        let stat = Stat::parse("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0").unwrap();
        assert_ne!(stat.flags & PF_KTHREAD, 0);
    }

    #[test]
    fn status_memory_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmSize:\t  8000 kB\nVmHWM:\t  300 kB\nVmRSS:\t  200 kB\n";
        let memory = MemoryStatus::parse(status);
        assert_eq!(memory.rss_bytes, 200 * 1024);
        assert_eq!(memory.virtual_bytes, 8000 * 1024);
        assert_eq!(memory.peak_rss_bytes, 300 * 1024);
    }

    #[test]
    fn missing_pid_is_a_clear_error() {
        let err = Process::open(999_999_999).unwrap_err().to_string();
        assert!(err.contains("no process with pid 999999999"), "{err}");
    }
}
