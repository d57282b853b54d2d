//! Measures what one probe hit costs on this machine, by probing two functions of memmon's own
//! executable with programs that do nothing and timing calls to them.
//!
//! The functions are written in assembly so that their first instruction is known: `push %rbp`,
//! which the kernel emulates (the cheap kind of site), and `mov %rdi,%rax`, which it must
//! single-step out of line (the kind probe_site avoids where it can). A few thousand calls per
//! measurement take tens of milliseconds.

use std::{arch::naked_asm, hint::black_box, num::NonZeroU32, time::Instant};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};

use super::HitCosts;

const CALLS: u32 = 2000;
const ROUNDS: usize = 3;

/// Starts with an instruction the kernel emulates when probed.
#[unsafe(naked)]
extern "C" fn probed_emulated(x: u64) -> u64 {
    naked_asm!("push rbp", "mov rbp, rsp", "lea rax, [rdi + 1]", "pop rbp", "ret")
}

/// Starts with an instruction the kernel single-steps when probed.
#[unsafe(naked)]
extern "C" fn probed_single_stepped(x: u64) -> u64 {
    naked_asm!("mov rax, rdi", "add rax, 1", "ret")
}

/// Nanoseconds per call of `function`, the median of a few rounds.
fn per_call_ns(function: extern "C" fn(u64) -> u64) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut value = 0u64;
            for _ in 0..CALLS {
                value = function(black_box(value));
            }
            black_box(value);
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

/// Probes `function` of this process with `program`.
fn probe(ebpf: &mut Ebpf, program: &str, function: extern "C" fn(u64) -> u64) -> Result<UProbeLink> {
    let address = function as usize as u64;
    let pid = std::process::id();
    let mapping = crate::unwind::maps::code_mappings(pid)?
        .into_iter()
        .find(|m| m.start <= address && address < m.end)
        .ok_or_else(|| anyhow!("memmon's own code is not in a file mapping"))?;
    let offset = address - mapping.start + mapping.offset;
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).expect("a pid is never 0"));
    let probe: &mut UProbe =
        ebpf.program_mut(program).ok_or_else(|| anyhow!("eBPF program {program} missing"))?.try_into()?;
    if probe.fd().is_err() {
        probe.load().with_context(|| format!("verifier rejected {program}"))?;
    }
    let point = UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(offset), cookie: None };
    let id = probe.attach(point, &mapping.path, scope).with_context(|| format!("probing memmon itself with {program}"))?;
    Ok(probe.take_link(id)?)
}

/// Measures the three kinds of hit. Detaching a uprobe waits for the kernel to synchronize,
/// so the links go to a thread that drops them, and calibrating takes only the calls' time.
pub fn measure(ebpf: &mut Ebpf) -> Result<HitCosts> {
    let base = per_call_ns(probed_emulated).min(per_call_ns(probed_single_stepped));
    let entry = probe(ebpf, "empty_enter", probed_emulated)?;
    let entry_emulated = per_call_ns(probed_emulated);
    let exit = probe(ebpf, "empty_exit", probed_emulated)?;
    let with_return = per_call_ns(probed_emulated);
    let stepped = probe(ebpf, "empty_enter", probed_single_stepped)?;
    let entry_single_stepped = per_call_ns(probed_single_stepped);
    detach_in_background(vec![entry, exit, stepped]);
    Ok(HitCosts {
        entry_emulated_ns: (entry_emulated - base).max(0.0),
        entry_single_stepped_ns: (entry_single_stepped - base).max(0.0),
        return_ns: (with_return - entry_emulated).max(0.0),
    })
}

/// Drops uprobe links on a thread of their own: each detach waits for an RCU grace period
/// (hundreds of milliseconds for dozens of probes), which must not stall the agent.
pub fn detach_in_background(links: Vec<UProbeLink>) {
    if links.is_empty() {
        return;
    }
    // Closing the links needs no capability, and this thread may outlive the agent's drop to
    // least privilege (capabilities are per thread): it keeps none while it waits on the kernel.
    let spawned = std::thread::Builder::new().name("memmon-detach".into()).spawn(move || {
        if let Err(err) = crate::privileges::drop_to(&[]) {
            log::debug!("the detaching thread keeps its capabilities: {err:#}");
        }
        drop(links)
    });
    if let Err(err) = spawned {
        log::warn!("no thread to detach probes on ({err}); they are detached when memmon exits");
    }
}
