//! `cargo xtask bench` (launch part): wall time of real programs from Debian untraced, under
//! `memmon run` (exact, from the first allocation, report at exit) and under valgrind's memcheck,
//! the oracle of launch mode's tests. Configurations are interleaved round by round; each figure
//! is the median of its rounds.
//!
//! `memmon run` pays a fixed cost per run (loading and verifying its eBPF programs, building the
//! unwind tables of the program's objects, symbolizing at exit); it is measured on `/bin/true`
//! and shown apart, because it dominates short commands.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use memmon_tests::{memmon_binary, real_programs::real_programs, require_root};

const ROUNDS: usize = 5;

#[derive(Clone, Copy)]
enum Runner {
    Untraced,
    Memmon,
    Valgrind,
}

impl Runner {
    const ALL: [Runner; 3] = [Runner::Untraced, Runner::Memmon, Runner::Valgrind];

    fn command(self, program: &[&str]) -> Command {
        let mut command = match self {
            Runner::Untraced => Command::new(program[0]),
            Runner::Memmon => {
                let mut command = Command::new(memmon_binary());
                command.args(["run", "--"]).arg(program[0]);
                command
            }
            Runner::Valgrind => {
                let mut command = Command::new("valgrind");
                command.args(["--run-libc-freeres=no", "--run-cxx-freeres=no"]).arg(program[0]);
                command
            }
        };
        command.args(&program[1..]);
        command
    }
}

/// Seconds one run of `program` takes under `runner`, in `dir`; the run must succeed.
fn time_once(runner: Runner, program: &[&str], env: &[(&str, &str)], dir: &Path) -> f64 {
    let mut command = runner.command(program);
    command.envs(env.iter().copied()).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let status = command.status().expect("cannot start the command");
    let seconds = start.elapsed().as_secs_f64();
    assert!(status.success(), "{program:?} failed: {status}");
    seconds
}

/// Each runner's median over `ROUNDS` interleaved rounds, after one warm-up round.
fn medians(program: &[&str], env: &[(&str, &str)], dir: &Path) -> [f64; 3] {
    let mut samples = [const { Vec::new() }; 3];
    for round in 0..=ROUNDS {
        for (index, runner) in Runner::ALL.into_iter().enumerate() {
            let seconds = time_once(runner, program, env, dir);
            if round > 0 {
                samples[index].push(seconds);
            }
        }
    }
    samples.map(|mut s| {
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    })
}

fn main() {
    require_root();
    let dir = std::env::temp_dir().join(format!("memmon-bench-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("\nmemmon run against valgrind memcheck: wall seconds, median of {ROUNDS} interleaved rounds");
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>11} {:>16} {:>14}",
        "program", "untraced", "memmon run", "valgrind", "memmon ×", "memmon − fixed ×", "valgrind ×"
    );
    let [_, fixed, _] = medians(&["/bin/true"], &[], &dir);
    for program in real_programs() {
        program.prepare(&dir);
        let [untraced, memmon, valgrind] = medians(&program.command(), program.env, &dir);
        println!(
            "{:<8} {untraced:>10.3} {memmon:>12.3} {valgrind:>10.3} {:>11.1} {:>16.1} {:>14.1}",
            program.name,
            memmon / untraced,
            (memmon - fixed).max(untraced) / untraced,
            valgrind / untraced
        );
    }
    println!(
        "memmon run's fixed cost per run (`memmon run -- /bin/true`): {fixed:.3} s; \"memmon − fixed ×\" is the slowdown without it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
