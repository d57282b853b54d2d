//! Starting the command stopped, under ptrace, and the few ptrace requests `memmon run` makes.
//!
//! The child stops itself (SIGSTOP) before its execve; memmon seizes it (PTRACE_SEIZE, so
//! group stops are told apart from signals and job control keeps working), lets it exec, and
//! gets the exec stop: the new image and its dynamic loader are mapped, nothing of the program
//! has run. PTRACE_O_EXITKILL ties the child's life to memmon's: if memmon dies, even by
//! SIGKILL, the kernel kills the child rather than leaving it traced or stopped.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};

/// A command memmon could not start, with the exit status a shell would give (127: not
/// found, 126: found but not executable).
#[derive(Debug)]
pub struct NotRunnable {
    pub message: String,
    pub exit_code: u8,
}

impl std::fmt::Display for NotRunnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NotRunnable {}

/// Finds `program` as execvp would (a name with a slash as is, else along PATH) and checks it
/// is an executable file, so that the usual mistakes get a shell's message and status.
pub fn resolve(program: &OsStr) -> Result<PathBuf, NotRunnable> {
    let shown = program.to_string_lossy();
    let check = |path: &Path| -> Result<(), NotRunnable> {
        match std::fs::metadata(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(NotRunnable { message: format!("{shown}: no such file or directory"), exit_code: 127 })
            }
            Err(err) => Err(NotRunnable { message: format!("{shown}: {err}"), exit_code: 126 }),
            Ok(meta) if meta.is_dir() => Err(NotRunnable { message: format!("{shown}: is a directory"), exit_code: 126 }),
            Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
                Err(NotRunnable { message: format!("{shown}: permission denied (not executable)"), exit_code: 126 })
            }
            Ok(_) => Ok(()),
        }
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        check(&path)?;
        return Ok(path);
    }
    if program.is_empty() {
        return Err(NotRunnable { message: "empty command".into(), exit_code: 127 });
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut denied = None;
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join(program);
        match check(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(err) if err.exit_code == 126 && candidate.exists() => denied = denied.or(Some(err)),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or(NotRunnable { message: format!("{shown}: command not found"), exit_code: 127 }))
}

/// The signals memmon forwards to the command (and reads from a signalfd), plus SIGCHLD.
pub const FORWARDED: [libc::c_int; 6] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Blocks SIGCHLD and the forwarded signals in memmon (they are read from the returned
/// signalfd) and returns it with the mask to restore in the child.
pub fn block_signals() -> Result<(libc::c_int, libc::sigset_t)> {
    // SAFETY: sigset manipulation on local values; signalfd on a valid set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED.iter().copied().chain([libc::SIGCHLD]) {
            libc::sigaddset(&mut set, signal);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            bail!("cannot block signals: {}", io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            bail!("signalfd: {}", io::Error::last_os_error());
        }
        Ok((fd, old))
    }
}

/// A child seized before its exec, and the pipe on which it writes its errno if the exec fails
/// (closed by a successful exec).
pub struct Spawned {
    pub pid: i32,
    pub exec_pipe: std::os::fd::OwnedFd,
}

impl Spawned {
    /// Why the child's execve failed, if it did (read once the child has exited).
    pub fn exec_error(&self) -> Option<io::Error> {
        use std::os::fd::AsRawFd as _;
        let mut errno = 0i32;
        // SAFETY: reading 4 bytes into a local from our own fd.
        let read = unsafe { libc::read(self.exec_pipe.as_raw_fd(), (&mut errno as *mut i32).cast(), 4) };
        (read == 4).then(|| io::Error::from_raw_os_error(errno))
    }
}

/// Forks the command; the child restores the signal mask, stops itself, and execs `path` once
/// memmon has seized it. Returns the child, seized, on its way to its exec.
pub fn spawn_seized(path: &Path, argv: &[OsString], mask: &libc::sigset_t, options: libc::c_int) -> Result<Spawned> {
    use std::os::fd::FromRawFd as _;
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| anyhow!("the command contains a NUL byte"))?;
    let c_args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.clone().into_vec()).map_err(|_| anyhow!("an argument contains a NUL byte")))
        .collect::<Result<_>>()?;
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    c_argv.push(std::ptr::null());
    let mut pipe = [0; 2];
    // SAFETY: a valid array for pipe2.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", io::Error::last_os_error());
    }
    // SAFETY: between fork and exec the child calls only async-signal-safe functions on data
    // prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            libc::close(pipe[0]);
            libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
            libc::raise(libc::SIGSTOP);
            libc::execv(c_path.as_ptr(), c_argv.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(pipe[1], (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }
    // SAFETY: our copy of the write end closes; the read end is ours alone.
    let exec_pipe = unsafe {
        libc::close(pipe[1]);
        std::os::fd::OwnedFd::from_raw_fd(pipe[0])
    };
    if let Err(err) = seize_stopped(pid, options) {
        kill_and_reap(pid);
        return Err(err);
    }
    Ok(Spawned { pid, exec_pipe })
}

fn seize_stopped(pid: i32, options: libc::c_int) -> Result<()> {
    let mut status = 0;
    // SAFETY: waitpid on our child with a valid status pointer.
    if unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) } != pid || !libc::WIFSTOPPED(status) {
        bail!("the child did not stop before its exec (status {status:#x})");
    }
    ptrace(PTRACE_SEIZE, pid, 0, options as u64).map_err(|err| anyhow!("PTRACE_SEIZE: {err}"))?;
    // The seize turns its stop into a trap stop; end the group stop and let it run to its exec.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } != pid {
        bail!("waiting for the seized child: {}", io::Error::last_os_error());
    }
    ptrace(PTRACE_CONT, pid, 0, 0).map_err(|err| anyhow!("PTRACE_CONT: {err}"))?;
    Ok(())
}

/// Kills a child memmon cannot trace, and reaps it (past its exit stop, if it makes one).
pub fn kill_and_reap(pid: i32) {
    // SAFETY: plain syscalls on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        loop {
            let mut status = 0;
            if libc::waitpid(pid, &mut status, libc::__WALL) != pid || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return;
            }
            let _ = ptrace(PTRACE_CONT, pid, 0, 0);
        }
    }
}

pub const PTRACE_CONT: u32 = 7;
pub const PTRACE_SYSCALL: u32 = 24;
pub const PTRACE_SEIZE: u32 = 0x4206;
pub const PTRACE_LISTEN: u32 = 0x4208;
pub const PTRACE_GETEVENTMSG: u32 = 0x4201;
pub const PTRACE_GET_SYSCALL_INFO: u32 = 0x420e;
pub const PTRACE_DETACH: u32 = 17;

pub const EVENT_FORK: i32 = 1;
pub const EVENT_VFORK: i32 = 2;
pub const EVENT_CLONE: i32 = 3;
pub const EVENT_EXEC: i32 = 4;
pub const EVENT_EXIT: i32 = 6;
pub const EVENT_STOP: i32 = 128;

pub fn ptrace(request: u32, pid: i32, addr: u64, data: u64) -> io::Result<i64> {
    // SAFETY: the requests memmon makes pass plain integers or pointers to buffers it owns.
    let ret = unsafe { libc::ptrace(request as _, pid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// PTRACE_GETEVENTMSG: the new pid of a fork event.
pub fn event_message(pid: i32) -> io::Result<u64> {
    let mut message = 0u64;
    ptrace(PTRACE_GETEVENTMSG, pid, 0, (&mut message as *mut u64) as u64)?;
    Ok(message)
}

/// A syscall stop: entry or exit, and the instruction pointer of the syscall.
#[derive(Clone, Copy, Debug)]
pub struct SyscallStop {
    pub entry: bool,
    pub instruction_pointer: u64,
}

/// PTRACE_GET_SYSCALL_INFO (struct ptrace_syscall_info: op, pad, arch, ip, sp, …).
pub fn syscall_stop(pid: i32) -> io::Result<SyscallStop> {
    let mut info = [0u8; 88];
    ptrace(PTRACE_GET_SYSCALL_INFO, pid, info.len() as u64, info.as_mut_ptr() as u64)?;
    let ip = u64::from_ne_bytes(info[8..16].try_into().unwrap());
    Ok(SyscallStop { entry: info[0] == 1, instruction_pointer: ip })
}

/// The instruction pointer of a stopped tracee.
pub fn instruction_pointer(pid: i32) -> io::Result<u64> {
    // SAFETY: user_regs_struct is plain data; PTRACE_GETREGS fills it.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS as u32, pid, 0, (&mut regs as *mut libc::user_regs_struct) as u64)?;
    Ok(regs.rip)
}

/// "SIGSEGV" for 11.
pub fn signal_name(signal: i32) -> String {
    const NAMES: [&str; 32] = [
        "0", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL", "SIGUSR1",
        "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP",
        "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(signal).ok().and_then(|s| NAMES.get(s)) {
        Some(name) if signal > 0 => name.to_string(),
        _ => format!("SIGRT{signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_resolve_like_a_shell() {
        assert_eq!(resolve(OsStr::new("sh")).unwrap().file_name().unwrap(), "sh");
        let missing = resolve(OsStr::new("memmon-no-such-command")).unwrap_err();
        assert_eq!((missing.exit_code, missing.message.as_str()), (127, "memmon-no-such-command: command not found"));
        assert_eq!(resolve(OsStr::new("/nonexistent/x")).unwrap_err().exit_code, 127);
        let not_executable = resolve(OsStr::new("/etc/passwd")).unwrap_err();
        assert_eq!(not_executable.exit_code, 126, "{not_executable}");
        assert_eq!(resolve(OsStr::new("/etc")).unwrap_err().exit_code, 126);
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(34), "SIGRT34");
    }
}
