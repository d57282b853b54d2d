//! The real programs from Debian that launch mode is checked against valgrind on, and timed
//! against it: one definition, so the benchmark times exactly what the tests compare.

use std::path::Path;

/// A command nobody here wrote, with the input files it reads and the environment that makes its
/// allocations deterministic (hash seeds).
pub struct RealProgram {
    pub name: &'static str,
    pub command: Vec<String>,
    pub env: &'static [(&'static str, &'static str)],
    files: &'static [(&'static str, fn() -> String)],
}

impl RealProgram {
    /// Writes the program's input files into `dir`, where it is to run.
    pub fn prepare(&self, dir: &Path) {
        for (file, contents) in self.files {
            std::fs::write(dir.join(file), contents()).unwrap();
        }
    }

    pub fn command(&self) -> Vec<&str> {
        self.command.iter().map(String::as_str).collect()
    }
}

fn numbers() -> String {
    (0..20000u64).map(|i| format!("{}\n", (i * 7919) % 20011)).collect()
}

fn python_script() -> String {
    "d = {str(i): [i] * 3 for i in range(20000)}\nprint(len(d))\n".into()
}

fn tcl_script() -> String {
    "set d [dict create]\nfor {set i 0} {$i < 5000} {incr i} { dict set d k$i [string repeat x [expr {$i % 50}]] }\nputs [dict size $d]\n"
        .into()
}

fn words(command: &[&str]) -> Vec<String> {
    command.iter().map(|w| w.to_string()).collect()
}

/// sort, perl, python3.11, tclsh8.6 and git, each doing a little real work.
pub fn real_programs() -> Vec<RealProgram> {
    vec![
        RealProgram { name: "sort", command: words(&["sort", "-n", "numbers.txt"]), env: &[], files: &[("numbers.txt", numbers)] },
        RealProgram {
            name: "perl",
            command: words(&["perl", "-e", "my %h; $h{$_} = $_ x 3 for 1..20000; print scalar(keys %h), qq(\\n);"]),
            env: &[("PERL_HASH_SEED", "0")],
            files: &[],
        },
        RealProgram {
            name: "python",
            command: words(&["/usr/bin/python3.11", "script.py"]),
            env: &[("PYTHONHASHSEED", "0")],
            files: &[("script.py", python_script)],
        },
        RealProgram { name: "tcl", command: words(&["tclsh8.6", "script.tcl"]), env: &[], files: &[("script.tcl", tcl_script)] },
        RealProgram { name: "git", command: words(&["/usr/bin/git", "--version"]), env: &[], files: &[] },
    ]
}

/// The real program called `name`.
pub fn real_program(name: &str) -> RealProgram {
    real_programs().into_iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no real program {name:?}"))
}
