//! Targets under seccomp. On x86-64, kernels since 6.11 end every return probe with a syscall of
//! their own (`uretprobe`, 335): the probe's trampoline makes it in the target. A seccomp filter
//! that does not allow it (systemd's `SystemCallFilter=` allowlists, strict mode) would kill the
//! target at the first traced return — unless the kernel lets that syscall past seccomp, as 6.18
//! does (measured: a target in strict mode and one under a kill-by-default allowlist both keep
//! running, every allocation counted).
//!
//! memmon does not guess from the version: before probing a target that has a seccomp policy,
//! it runs the experiment once on a child of its own in strict mode (`return_probes_survive`),
//! and refuses to attach, saying why, where the child was killed.

use std::{fs, num::NonZeroU32};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};

/// A process' seccomp policy, from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// 0 none, 1 strict, 2 filter (`Seccomp:`).
    pub mode: u8,
    /// Filters installed (`Seccomp_filters:`).
    pub filters: u32,
}

impl Policy {
    pub fn of(pid: u32) -> Policy {
        fs::read_to_string(format!("/proc/{pid}/status")).map(|s| Policy::parse(&s)).unwrap_or_default()
    }

    pub fn parse(status: &str) -> Policy {
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u32>().ok());
        Policy { mode: field("Seccomp:").unwrap_or(0) as u8, filters: field("Seccomp_filters:").unwrap_or(0) }
    }

    /// "strict", "filter (N)", or None without a policy.
    pub fn describe(&self) -> Option<String> {
        match self.mode {
            0 => None,
            1 => Some("strict".into()),
            _ => Some(format!("filter ({} installed)", self.filters)),
        }
    }
}

/// What the experiment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A return probe fired in a strict-mode child, which survived it.
    Survive,
    /// The child was killed at the probed return.
    Killed,
    /// The experiment could not tell (the probe did not fire, or something failed).
    Unknown(String),
}

/// Why memmon must not probe a target with `policy`, given the experiment's `verdict`; None
/// when it may.
pub fn refusal(pid: u32, comm: &str, policy: Policy, verdict: &Verdict) -> Option<String> {
    let described = policy.describe()?;
    match verdict {
        Verdict::Survive => None,
        Verdict::Killed => Some(format!(
            "pid {pid} ({comm}) runs under seccomp ({described}), and on this kernel a return probe ends with the \
             `uretprobe` syscall, which seccomp does not let through: memmon's probes would kill it. memmon does not \
             attach. Allow syscall 335 (`uretprobe`) in its filter (systemd: SystemCallFilter=), or use a kernel that \
             passes it through seccomp (Linux 6.14 and later do)"
        )),
        Verdict::Unknown(why) => Some(format!(
            "pid {pid} ({comm}) runs under seccomp ({described}), and memmon could not check whether its return probes \
             are safe there ({why}); it does not attach, rather than risk killing the process"
        )),
    }
}

/// Returns its own return address, as it finds it on the stack: a return probe at its first
/// instruction has replaced that with the kernel's trampoline by then.
#[unsafe(naked)]
extern "C" fn canary_return_address() -> u64 {
    std::arch::naked_asm!("mov rax, [rsp]", "ret")
}

static VERDICT: std::sync::OnceLock<Verdict> = std::sync::OnceLock::new();

/// Whether return probes spare a process under seccomp on this machine: the experiment runs
/// once, when the first target with a seccomp policy is probed.
pub fn verdict(ebpf: &mut Ebpf) -> &'static Verdict {
    if VERDICT.get().is_none() {
        let verdict = return_probes_survive(ebpf);
        log::info!("return probes under seccomp strict mode, tried on a child of memmon: {verdict:?}");
        let _ = VERDICT.set(verdict);
    }
    VERDICT.get().expect("set above")
}

/// The experiment's verdict, if it has run.
pub fn known_verdict() -> Option<&'static Verdict> {
    VERDICT.get()
}

/// The experiment: a child of memmon puts itself in seccomp strict mode (read, write, exit and
/// sigreturn only), then calls a function carrying a return probe (`empty_exit`, which does
/// nothing). A few milliseconds.
pub fn return_probes_survive(ebpf: &mut Ebpf) -> Verdict {
    match experiment(ebpf) {
        Ok(verdict) => verdict,
        Err(err) => Verdict::Unknown(format!("{err:#}")),
    }
}

fn experiment(ebpf: &mut Ebpf) -> Result<Verdict> {
    let (go_read, go_write) = pipe()?;
    let (result_read, result_write) = pipe()?;
    // SAFETY: the child calls only async-signal-safe functions (read, prctl, write, exit) and
    // the canary, then ends with the raw exit syscall (strict mode allows no exit_group).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(anyhow!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        unsafe {
            let mut go = 0u8;
            libc::read(go_read, (&mut go as *mut u8).cast(), 1);
            if libc::prctl(libc::PR_SET_SECCOMP, 1 /* SECCOMP_MODE_STRICT */) != 0 {
                libc::_exit(3);
            }
            let address = canary_return_address();
            libc::write(result_write, (&address as *const u64).cast(), 8);
            libc::syscall(libc::SYS_exit, 0);
        }
        unreachable!();
    }
    unsafe {
        libc::close(go_read);
        libc::close(result_write);
    }
    let verdict = probe_and_run(ebpf, child as u32, go_write, result_read);
    unsafe {
        libc::close(go_write);
        libc::close(result_read);
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    verdict
}

fn probe_and_run(ebpf: &mut Ebpf, child: u32, go: libc::c_int, result: libc::c_int) -> Result<Verdict> {
    let address = canary_return_address as *const () as u64;
    let mapping = crate::unwind::maps::code_mappings(std::process::id())?
        .into_iter()
        .find(|m| m.start <= address && address < m.end)
        .ok_or_else(|| anyhow!("memmon's own code is not in a file mapping"))?;
    let probe: &mut UProbe = ebpf.program_mut("empty_exit").ok_or_else(|| anyhow!("eBPF program empty_exit missing"))?.try_into()?;
    if probe.fd().is_err() {
        probe.load().context("verifier rejected empty_exit")?;
    }
    let point = UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(address - mapping.start + mapping.offset), cookie: None };
    let scope = UProbeScope::OneProcess(NonZeroU32::new(child).expect("a child's pid is not 0"));
    let id = probe.attach(point, &mapping.path, scope).context("probing memmon's own canary")?;
    let link = probe.take_link(id)?;
    let mut status = 0;
    let mut returned = 0u64;
    unsafe {
        libc::write(go, [1u8].as_ptr().cast(), 1);
        libc::waitpid(child as i32, &mut status, 0);
        libc::read(result, (&mut returned as *mut u64).cast(), 8);
    }
    crate::overhead::calibrate::detach_in_background(vec![link]);
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        return Ok(Verdict::Killed);
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Ok(Verdict::Unknown(format!("the strict-mode child ended with status {status:#x}")));
    }
    // Hijacked: the return address the canary saw is the trampoline's, outside memmon's code.
    if mapping.start <= returned && returned < mapping.end {
        return Ok(Verdict::Unknown("the return probe did not fire in the child".into()));
    }
    Ok(Verdict::Survive)
}

fn pipe() -> Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    // SAFETY: a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(anyhow!("pipe: {}", std::io::Error::last_os_error()));
    }
    Ok((fds[0], fds[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_from_status() {
        let status = "Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t3\nSpeculation_Store_Bypass:\tthread vulnerable\n";
        assert_eq!(Policy::parse(status), Policy { mode: 2, filters: 3 });
        assert_eq!(Policy::parse("Name:\tx\n"), Policy::default());
        assert_eq!(Policy { mode: 1, filters: 0 }.describe().as_deref(), Some("strict"));
    }

    #[test]
    fn refuses_only_where_the_probes_would_kill_or_nobody_knows() {
        let strict = Policy { mode: 1, filters: 0 };
        assert_eq!(refusal(7, "app", Policy::default(), &Verdict::Killed), None);
        assert_eq!(refusal(7, "app", strict, &Verdict::Survive), None);
        let killed = refusal(7, "app", Policy { mode: 2, filters: 1 }, &Verdict::Killed).unwrap();
        assert!(killed.contains("pid 7 (app) runs under seccomp (filter (1 installed))") && killed.contains("uretprobe"), "{killed}");
        assert!(killed.contains("SystemCallFilter="), "{killed}");
        let unknown = refusal(7, "app", strict, &Verdict::Unknown("no fork".into())).unwrap();
        assert!(unknown.contains("could not check") && unknown.contains("no fork"), "{unknown}");
    }
}
