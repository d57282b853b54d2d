//! The objects a freshly exec'ed image will map, before its dynamic loader has mapped them.
//!
//! At the exec stop /proc/PID/maps lists only the executable, the loader and the vDSO. The
//! loader itself tells what it will map: `LOADER --list EXE` (what `ldd` runs) resolves the
//! executable's dependencies and preloads in load order without running any of the program's
//! code, with the child's own LD_PRELOAD and LD_LIBRARY_PATH. Uprobes are registered on a
//! file's inode and fire in every mapping of it made later, so probes attached by path now are
//! in place when the loader maps the library.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use object::read::elf::ProgramHeader as _;

/// What an exec'ed image is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The executable (after #! scripts, the interpreter the kernel ran), as the process sees it.
    pub exe: String,
    /// Its PT_INTERP (the dynamic loader); None for a static executable.
    pub loader: Option<String>,
    /// The executable first, then every object the loader maps, in load order.
    pub objects: Vec<String>,
}

/// The image `pid` has just exec'ed (it must still be stopped at its exec).
pub fn image(pid: u32) -> Result<Image> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).context("reading the new image's /proc/PID/exe")?;
    let exe = exe.to_string_lossy().trim_end_matches(" (deleted)").to_string();
    let root = |path: &str| format!("/proc/{pid}/root{path}");
    let data = fs::read(root(&exe)).with_context(|| format!("cannot read {exe}"))?;
    let loader = interpreter(&data).with_context(|| format!("{exe} is not an ELF file memmon can read"))?;
    let mut objects = vec![exe.clone()];
    if let Some(loader) = &loader {
        let environment = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let listed = list_with_loader(&root(loader), &root(&exe), &environment)
            .with_context(|| format!("asking the dynamic loader {loader} what {exe} maps"))?;
        for object in listed {
            if !objects.contains(&object) {
                objects.push(object);
            }
        }
    }
    Ok(Image { exe, loader, objects })
}

/// The PT_INTERP of an ELF executable.
fn interpreter(data: &[u8]) -> Result<Option<String>> {
    let file = object::File::parse(data)?;
    let object::File::Elf64(elf) = &file else { bail!("not a 64-bit ELF file") };
    let endian = elf.endian();
    for header in elf.elf_program_headers() {
        if header.p_type(endian) == object::elf::PT_INTERP {
            let bytes = header.data(endian, data).map_err(|()| anyhow::anyhow!("bad PT_INTERP"))?;
            let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(path).into_owned()));
        }
    }
    Ok(None)
}

/// `LOADER --list EXE` with the loader variables of the target's environment.
fn list_with_loader(loader: &str, exe: &str, environment: &[u8]) -> Result<Vec<String>> {
    let mut command = Command::new(loader);
    command.arg("--list").arg(exe).env_remove("LD_PRELOAD").env_remove("LD_LIBRARY_PATH");
    for entry in environment.split(|&b| b == 0) {
        let entry = String::from_utf8_lossy(entry);
        if let Some((name @ ("LD_PRELOAD" | "LD_LIBRARY_PATH"), value)) = entry.split_once('=') {
            command.env(name, value);
        }
    }
    let output = command.output().with_context(|| format!("cannot run {loader}"))?;
    if !output.status.success() {
        bail!("{} --list failed ({}): {}", loader, output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(parse_list(&String::from_utf8_lossy(&output.stdout)))
}

/// Paths from `ld.so --list` output ("name => /path (0x…)", or "/path (0x…)"), in order;
/// unresolved names ("=> not found") and the vDSO are left out.
fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.trim(),
                None => line,
            };
            let path = path.rsplit_once(" (0x").map_or(path, |(path, _)| path).trim();
            (path.starts_with('/') && Path::new(path).is_absolute()).then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_list_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd3b5f2000)\n\
                    \t/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f1)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f2)\n\
                    \tlibgone.so.1 => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_list(text),
            ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/lib/x86_64-linux-gnu/libm.so.6", "/lib64/ld-linux-x86-64.so.2"]
        );
    }

    #[test]
    fn interpreters_of_real_binaries() {
        let sh = fs::read("/bin/sh").unwrap();
        assert_eq!(interpreter(&sh).unwrap().as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
    }
}
