//! `cargo xtask setup`: installs what building memmon's eBPF programs needs, idempotently.
//!
//! The recipe (shared/TOOLCHAIN.md): Debian's LLVM 22 development files, `rust-src` for the
//! image's nightly (for `-Z build-std=core`), and bpf-linker 0.13.0 built against LLVM 22.
//! Never `rustup update`: a newer nightly carries LLVM 23, whose bitcode this linker rejects.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// What a task needs installed: building memmon and running the bundled demo, or also the
/// tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Build,
    Test,
}

/// The eBPF build needs LLVM 22; the demo needs a C compiler.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "gcc"];

/// The integration tests and benchmarks need compilers for their targets, the third-party
/// allocators they run those targets under (LD_PRELOAD), Prometheus (promtool checks the
/// agent's /metrics), Go (`go tool pprof` reads memmon's profiles), headless Chromium, which
/// draws `memmon report flamegraph`'s SVG to check its frames are there, with a font to lay out
/// the frame labels in (chromium only recommends fonts-liberation, and recommended packages are
/// not installed here), gdb, whose backtraces are the oracle of the stack tests, and real
/// programs from Debian that the tests attach to: python3.11 (and a Django 3.2 app under
/// gunicorn, python3-django and gunicorn, whose leaking view is named by its Python frames) and redis-server (on jemalloc,
/// whose probes must all be cheap; redis-tools brings redis-benchmark). `memmon run` is checked
/// against valgrind's memcheck on real programs: valgrind itself, Tcl's tclsh8.6 and git (perl,
/// sort and python3.11 are there already). The benchmarks compare with heaptrack (which attaches
/// through gdb) and read the kernel's per-program run times with bpftool. tests/security.rs runs
/// an agent as nobody with setpriv (util-linux) and checks the systemd unit with systemd-analyze.
const TEST_PACKAGES: &[&str] = &[
    "g++",
    "libjemalloc2",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
    "prometheus",
    "golang-go",
    "chromium",
    "fonts-liberation",
    "gdb",
    "python3.11",
    "python3-django",
    "gunicorn",
    "redis-server",
    "redis-tools",
    "valgrind",
    "tcl8.6",
    "git",
    "heaptrack",
    "bpftool",
    "util-linux",
    "systemd",
];

fn packages(scope: Scope) -> Vec<&'static str> {
    let mut packages = BUILD_PACKAGES.to_vec();
    if scope == Scope::Test {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    packages
}

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Installs whatever is missing; prints one line per step.
pub fn run(scope: Scope) -> Result<()> {
    apt_packages(scope)?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// Whether everything is in place (cheap: used before every build/run/test).
pub fn is_complete(scope: Scope) -> bool {
    packages(scope).iter().all(|p| deb_installed(p)) && rust_src_installed() && bpf_linker_ok()
}

fn apt_packages(scope: Scope) -> Result<()> {
    let wanted = packages(scope);
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !deb_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages {} already installed", wanted.join(", "));
        return Ok(());
    }
    if !is_root() {
        bail!("setup: {} must be installed and that needs root: run `sudo apt-get install -y {}`",
            missing.join(", "), missing.join(" "));
    }
    println!("setup: installing {} (apt-get)", missing.join(", "));
    run_step(Command::new("apt-get").args(["update", "-q"]), "apt-get update")?;
    run_step(
        Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

fn rust_src() -> Result<()> {
    if rust_src_installed() {
        println!("setup: rust-src for the {NIGHTLY} toolchain already installed");
        return Ok(());
    }
    if !quiet(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"])) {
        bail!("setup: the `{NIGHTLY}` toolchain is missing; this machine's image should ship it \
               (do not `rustup update`: a newer nightly breaks bpf-linker's LLVM 22)");
    }
    println!("setup: installing rust-src for the {NIGHTLY} toolchain (rustup)");
    run_step(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        "rustup component add rust-src",
    )
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} (LLVM 22) already installed");
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (cargo install, ~1.5 min)");
    run_step(
        Command::new("cargo")
            .args(["install", "--force", "--version", BPF_LINKER_VERSION, "bpf-linker",
                   "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
        "cargo install bpf-linker",
    )?;
    if !bpf_linker_ok() {
        bail!("setup: bpf-linker was installed but `bpf-linker --version` does not report \
               {BPF_LINKER_VERSION}; is ~/.cargo/bin (or $CARGO_INSTALL_ROOT/bin) on PATH?");
    }
    Ok(())
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

fn quiet(command: &mut Command) -> bool {
    command.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run_step(command: &mut Command, what: &str) -> Result<()> {
    let status = command.status().with_context(|| format!("setup: cannot start {what}"))?;
    if !status.success() {
        bail!("setup: {what} failed ({status}); see its output above");
    }
    Ok(())
}
