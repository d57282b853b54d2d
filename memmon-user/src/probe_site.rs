//! Choosing where to place the probes of each allocator function: the pure decision, from the
//! function's machine code (no I/O; `allocator::probe_sites` reads the ELF file and calls it).
//!
//! A uprobe traps on the probed instruction, and the x86-64 kernel then either **emulates** that
//! instruction (`push reg`, and relative `jmp`/`call`/`jcc`: `branch_setup_xol_ops` and
//! `push_setup_xol_ops` in arch/x86/kernel/uprobes.c) or **single-steps** a copy of it out of
//! line, which on these VMs costs tens of microseconds per hit instead of about one. glibc's
//! malloc starts with `push`, but jemalloc's starts with `cmp $0x1000,%rdi`, tcmalloc's with a
//! RIP-relative `mov`, mimalloc's free with `mov %rdi,%rcx`: probed at their entries, every call
//! is single-stepped. So memmon probes a function at the **first instruction the kernel
//! emulates**, when that is provably equivalent to probing its entry:
//!
//! 1. Every instruction skipped is straight-line (iced's flow control `Next`): every call that
//!    enters the function falls through to the site, exactly once.
//! 2. Nothing reaches the site without passing the entry: no direct branch or call anywhere in
//!    the object's code (this function's, every other function's) targets an address in
//!    (entry, site], no function symbol starts there (other objects may call it through the PLT,
//!    where no branch in this object shows it), and this function has no indirect
//!    jump (a jump table could land anywhere in it; a `jmp *…(%rip)` through the GOT is a tail
//!    call to a function's entry and is allowed). Indirect jumps elsewhere are jump tables of
//!    their own functions or calls through pointers to entries; compilers do not make either
//!    land in the middle of another function's first basic block (neither do landing pads,
//!    which are blocks reached only by unwinding, never the fall-through of an entry block).
//!    glibc's `aligned_alloc` jumps into the middle of `malloc`, which is why this is checked.
//! 3. The skipped instructions change nothing the probes read. Not the stack pointer: the entry
//!    program keys calls in flight by it. Not, when a return probe shares the site, the return
//!    address at `[rsp]`: the kernel takes it from there to hijack the return (TOOLCHAIN.md
//!    measured that a return probe at a later offset works while it is there). And not the
//!    arguments the entry program decodes (each program's own: malloc's reads only `rdi`,
//!    realloc's `rdi` and `rsi`, …), with one allowance: an argument whose register is
//!    overwritten is still readable if a 64-bit `mov` copied it to another register first, and
//!    the entry program is then told, by the probe's attach cookie, to read it there (mimalloc's
//!    malloc moves its size to `rsi` and loads its heap into `rdi` before its first branch).
//!    Everything else is harmless: the skipped instructions run natively before the trap, so
//!    their memory reads (RIP-relative, `%fs:`), their flag and scratch-register writes and
//!    their stores elsewhere are exactly what the uninstrumented function does. The stack walk
//!    starts in the return probe, from the registers at the return, which the move does not
//!    change.
//!
//! Only the first emulated instruction can be the site: any later one lies past an emulated
//! branch (not straight-line) or an emulated push (which moves the stack pointer). When no site
//! satisfies all of this within [`WINDOW`] instructions, the probe stays at the entry and the
//! reason is kept, so that `status` can say which functions are single-stepped and why.

use std::{collections::BTreeMap, fmt};

use iced_x86::{
    Code as Opcode, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, OpKind,
    Register,
};

/// How many instructions a probe may move past, at most. The longest prefix met on Debian 12's
/// allocators is jemalloc's free: nine instructions before its first `jne`.
pub const WINDOW: usize = 24;

/// The SysV x86-64 integer argument registers, by argument index.
pub const ARGUMENT_REGISTERS: [Register; 6] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8, Register::R9];

/// What a function's probes read at the probed instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// The arguments (by index: 0 is `rdi`) the entry program reads from their registers.
    pub args: &'static [usize],
    /// Whether a return probe shares the site (it reads the return address at `[rsp]`).
    pub returns: bool,
}

/// Machine code at its virtual address.
#[derive(Clone, Copy, Debug)]
pub struct Code<'a> {
    pub address: u64,
    pub bytes: &'a [u8],
}

/// A function whose probes are being placed.
#[derive(Clone, Copy, Debug)]
pub struct Probed<'a> {
    /// The function's code: all of it (its ELF symbol's size), or only its first bytes when the
    /// symbol has no size.
    pub code: Code<'a>,
    /// Whether `code` is the whole function; only then can its branches be checked.
    pub whole: bool,
    pub needs: Needs,
}

/// Where a function is probed, and whether the kernel emulates the instruction there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Bytes past the function's entry.
    pub offset: u64,
    /// Emulated: about a microsecond per hit. Single-stepped: tens of microseconds.
    pub emulated: bool,
    /// Why a single-stepped entry could not move to an emulated instruction.
    pub kept: Option<Obstacle>,
    /// Arguments (by index) that are no longer in their ABI register at the site, with the
    /// register holding a copy (mimalloc's malloc moves its size from rdi to rsi before its first
    /// branch): the entry program must read them there.
    pub relocated: Vec<(usize, Register)>,
}

impl Site {
    fn entry(kept: Obstacle, first_emulated: bool) -> Self {
        let kept = (!first_emulated).then_some(kept);
        Self { offset: 0, emulated: first_emulated, kept, relocated: Vec::new() }
    }
}

/// Why a probe stays at its function's entry. Offsets are from the entry; `from` is an address
/// in the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obstacle {
    /// Site choice is turned off (`MEMMON_OPTIMIZE_PROBE_SITES=false`).
    Disabled,
    /// The symbol has no size: the function cannot be decoded whole, so its branches are unknown.
    UnknownSize,
    Undecodable { at: u64 },
    /// A branch, call or return before any emulated instruction.
    NotStraightLine { at: u64 },
    /// A skipped instruction writes a register the probe reads.
    Writes { at: u64, register: Register },
    /// A skipped instruction may store to the return address a return probe takes from `[rsp]`.
    WritesReturnAddress { at: u64 },
    /// No emulated instruction within the first `window` instructions.
    NoEmulatedInstruction { window: usize },
    /// Code at `from` branches to `to`, between the entry and the site.
    BranchInto { from: u64, to: u64 },
    /// Another function's symbol starts between the entry and the site: it can be called there.
    SymbolInside { at: u64 },
    /// An indirect jump in the function could land between the entry and the site.
    IndirectJump { at: u64 },
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => write!(f, "probe-site choice is off (MEMMON_OPTIMIZE_PROBE_SITES=false)"),
            Self::UnknownSize => write!(f, "its symbol has no size, so its branches cannot be checked"),
            Self::Undecodable { at } => write!(f, "the instruction at +{at} cannot be decoded"),
            Self::NotStraightLine { at } => {
                write!(f, "a branch, call or return at +{at} comes before any instruction the kernel emulates")
            }
            Self::Writes { at, register } => {
                write!(f, "the instruction at +{at} writes {}, which the probe reads", format!("{register:?}").to_lowercase())
            }
            Self::WritesReturnAddress { at } => write!(f, "the instruction at +{at} may write the return address"),
            Self::NoEmulatedInstruction { window } => {
                write!(f, "none of its first {window} instructions is one the kernel emulates")
            }
            Self::SymbolInside { at } => write!(f, "another function's symbol starts at +{at}, past the entry"),
            Self::BranchInto { from, to } => write!(f, "code at {from:#x} reaches +{to} without passing the entry"),
            Self::IndirectJump { at } => write!(f, "an indirect jump at +{at} could land past the entry"),
        }
    }
}

/// Chooses the site of every function in `probed`, all defined by one object whose code is
/// `object`: its executable code in pieces, each starting at a section's start or at a function
/// symbol (`probed` may be among them). A piece's start is an entry point too: code in other
/// objects may call a symbol through the PLT, where no branch in this object shows it.
pub fn choose_sites(probed: &[Probed], object: &[Code]) -> Vec<Site> {
    let candidates: Vec<Result<Candidate, Site>> = probed.iter().map(candidate).collect();
    // Windows (entry, site] that nothing may branch into, and the branches that do.
    let windows: Vec<(u64, u64)> = candidates
        .iter()
        .zip(probed)
        .filter_map(|(c, p)| c.as_ref().ok().map(|c| (p.code.address + 1, p.code.address + c.offset)))
        .collect();
    let mut landings = Landings::watching(windows);
    for code in object.iter().chain(probed.iter().map(|p| &p.code)) {
        landings.scan(*code);
    }
    for entry in object.iter().chain(probed.iter().map(|p| &p.code)) {
        landings.land(entry.address, entry.address);
    }
    candidates
        .into_iter()
        .zip(probed)
        .map(|(candidate, function)| match candidate {
            Err(site) => site,
            Ok(candidate) => confirm(function, candidate, &landings),
        })
        .collect()
}

/// Every function probed at its entry: the site when choosing is turned off.
pub fn entry_site(code: &[u8]) -> Site {
    Site::entry(Obstacle::Disabled, first_is_emulated(code))
}

/// The first emulated instruction, reached by a straight line that leaves the probe's
/// registers alone; not yet checked against branches.
#[derive(Clone, Debug)]
struct Candidate {
    offset: u64,
    relocated: Vec<(usize, Register)>,
}

/// `Err` is a decision already taken: the entry (emulated, or the reason it must stay).
fn candidate(function: &Probed) -> Result<Candidate, Site> {
    let code = function.code;
    let first_emulated = first_is_emulated(code.bytes);
    let keep = |obstacle| Site::entry(obstacle, first_emulated);
    let mut decoder = Decoder::with_ip(64, code.bytes, code.address, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    let mut homes = Homes::new(function.needs.args);
    for _ in 0..WINDOW {
        if !decoder.can_decode() {
            return Err(keep(Obstacle::NoEmulatedInstruction { window: WINDOW }));
        }
        let position = decoder.position();
        decoder.decode_out(&mut instruction);
        let at = instruction.ip() - code.address;
        if instruction.is_invalid() {
            return Err(keep(Obstacle::Undecodable { at }));
        }
        if kernel_emulates(&instruction, &code.bytes[position..]) {
            if at == 0 {
                return Err(Site { offset: 0, emulated: true, kept: None, relocated: Vec::new() });
            }
            if !function.whole {
                return Err(keep(Obstacle::UnknownSize));
            }
            return Ok(Candidate { offset: at, relocated: homes.relocated() });
        }
        if instruction.flow_control() != FlowControl::Next {
            return Err(keep(Obstacle::NotStraightLine { at }));
        }
        let info = info.info(&instruction);
        let written: Vec<Register> =
            info.used_registers().iter().filter(|used| writes(used.access())).map(|used| used.register().full_register()).collect();
        if written.contains(&Register::RSP) {
            return Err(keep(Obstacle::Writes { at, register: Register::RSP }));
        }
        if let Err(register) = homes.update(&written, register_copy(&instruction)) {
            return Err(keep(Obstacle::Writes { at, register }));
        }
        if function.needs.returns && info.used_memory().iter().any(|m| writes(m.access()) && may_touch_return_address(m)) {
            return Err(keep(Obstacle::WritesReturnAddress { at }));
        }
    }
    Err(keep(Obstacle::NoEmulatedInstruction { window: WINDOW }))
}

/// Where each argument the probe reads is, along the skipped instructions: the registers holding
/// its value (its ABI register, and any full 64-bit copies made since).
struct Homes {
    args: Vec<(usize, Vec<Register>)>,
}

impl Homes {
    fn new(args: &[usize]) -> Self {
        Self { args: args.iter().map(|&arg| (arg, ARGUMENT_REGISTERS.get(arg).copied().into_iter().collect())).collect() }
    }

    /// An instruction wrote `written`, copying one register to another if `copy` is
    /// `(destination, source)`. Fails with the register whose write lost an argument's last copy.
    fn update(&mut self, written: &[Register], copy: Option<(Register, Register)>) -> Result<(), Register> {
        for (_, homes) in &mut self.args {
            let copied = copy.is_some_and(|(_, source)| homes.contains(&source));
            let lost = homes.iter().copied().find(|home| written.contains(home));
            homes.retain(|home| !written.contains(home));
            match (copied, lost) {
                (true, _) => homes.push(copy.expect("copied").0),
                (false, Some(register)) if homes.is_empty() => return Err(register),
                _ => {}
            }
        }
        Ok(())
    }

    /// The arguments no longer in their ABI register, with a register that holds them.
    fn relocated(&self) -> Vec<(usize, Register)> {
        self.args
            .iter()
            .filter(|(arg, homes)| !homes.contains(&ARGUMENT_REGISTERS[*arg]))
            .map(|(arg, homes)| (*arg, homes[0]))
            .collect()
    }
}

/// `(destination, source)` of a 64-bit register-to-register `mov`: the one copy the argument
/// tracking follows (a 32-bit mov truncates, anything else computes).
fn register_copy(instruction: &Instruction) -> Option<(Register, Register)> {
    let registers = instruction.op_count() == 2
        && instruction.op0_kind() == OpKind::Register
        && instruction.op1_kind() == OpKind::Register;
    (registers && matches!(instruction.code(), Opcode::Mov_rm64_r64 | Opcode::Mov_r64_rm64))
        .then(|| (instruction.op0_register(), instruction.op1_register()))
}

/// Checks the whole function: no branch of its own into (entry, site], and no indirect jump.
fn confirm(function: &Probed, candidate: Candidate, landings: &Landings) -> Site {
    let code = function.code;
    let keep = |obstacle| Site::entry(obstacle, false);
    let window = code.address + 1..=code.address + candidate.offset;
    let mut decoder = Decoder::with_ip(64, code.bytes, code.address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.flow_control() == FlowControl::IndirectBranch && !instruction.is_ip_rel_memory_operand() {
            return keep(Obstacle::IndirectJump { at: instruction.ip() - code.address });
        }
    }
    if let Some((from, to)) = landings.into(window) {
        let at = to - code.address;
        return keep(if from == to { Obstacle::SymbolInside { at } } else { Obstacle::BranchInto { from, to: at } });
    }
    Site { offset: candidate.offset, emulated: true, kept: None, relocated: candidate.relocated }
}

/// Direct branch targets that land in watched windows, with where they come from.
struct Landings {
    windows: Vec<(u64, u64)>,
    /// target → the first branch seen to it.
    found: BTreeMap<u64, u64>,
}

impl Landings {
    fn watching(mut windows: Vec<(u64, u64)>) -> Self {
        windows.sort_unstable();
        Self { windows, found: BTreeMap::new() }
    }

    fn scan(&mut self, code: Code) {
        if self.windows.is_empty() {
            return;
        }
        let mut decoder = Decoder::with_ip(64, code.bytes, code.address, DecoderOptions::NONE);
        let mut instruction = Instruction::default();
        while decoder.can_decode() {
            decoder.decode_out(&mut instruction);
            if matches!(instruction.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64) {
                self.land(instruction.ip(), instruction.near_branch_target());
            }
        }
    }

    /// Records that `from` reaches `target` without passing the entry of its function.
    fn land(&mut self, from: u64, target: u64) {
        let window = self.windows.partition_point(|&(start, _)| start <= target);
        if window > 0 && target <= self.windows[window - 1].1 {
            self.found.entry(target).or_insert(from);
        }
    }

    /// The first recorded branch (source, target) into `window`.
    fn into(&self, window: std::ops::RangeInclusive<u64>) -> Option<(u64, u64)> {
        self.found.range(window).next().map(|(&to, &from)| (from, to))
    }
}

fn writes(access: OpAccess) -> bool {
    matches!(access, OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
}

/// A store based on the stack pointer that may overlap the 8 bytes at `[rsp]`.
fn may_touch_return_address(memory: &iced_x86::UsedMemory) -> bool {
    if memory.base().full_register() != Register::RSP {
        return false;
    }
    if memory.index() != Register::None {
        return true;
    }
    let start = memory.displacement() as i64;
    let size = memory.memory_size().size().max(1) as i64;
    start < 8 && start.saturating_add(size) > 0
}

fn first_is_emulated(code: &[u8]) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    decoder.can_decode() && {
        let instruction = decoder.decode();
        !instruction.is_invalid() && kernel_emulates(&instruction, code)
    }
}

/// Instructions the x86-64 uprobe code emulates instead of single-stepping
/// (arch/x86/kernel/uprobes.c): `jmp rel8/rel32`, `call rel32` and `jcc rel8/rel32` without a
/// 0x66 prefix (`branch_setup_xol_ops`), and `push r64` encoded in one byte or as 0x41 + one
/// byte (`push_setup_xol_ops`). `bytes` starts at the instruction.
fn kernel_emulates(instruction: &Instruction, bytes: &[u8]) -> bool {
    let encoding = &bytes[..instruction.len().min(bytes.len())];
    match instruction.code() {
        Opcode::Push_r64 => encoding.len() == 1 || (encoding.len() == 2 && encoding[0] == 0x41),
        Opcode::Jmp_rel8_64 | Opcode::Jmp_rel32_64 | Opcode::Call_rel32_64 => !has_prefix_66(encoding),
        _ => {
            instruction.flow_control() == FlowControl::ConditionalBranch
                && instruction.is_jcc_short_or_near()
                && !has_prefix_66(encoding)
        }
    }
}

/// Whether an operand-size prefix is among the legacy prefixes that start `encoding`.
fn has_prefix_66(encoding: &[u8]) -> bool {
    encoding
        .iter()
        .take_while(|b| matches!(b, 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65))
        .any(|&b| b == 0x66)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{CXX_DELETE, CXX_NEW, FAMILY};

    // The first instructions of each allocator's entry points, as Debian 12 ships them (objdump
    // -d of the installed packages): enough of each function to reach the instruction the
    // decision rests on. Offsets are from the entry.

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `malloc`
    const GLIBC_MALLOC: &[u8] = &[
        0x41, 0x54, // +0: push %r12
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `calloc`
    const GLIBC_CALLOC: &[u8] = &[
        0x41, 0x55, // +0: push %r13
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `realloc`
    const GLIBC_REALLOC: &[u8] = &[
        0x41, 0x57, // +0: push %r15
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `reallocarray`
    const GLIBC_REALLOCARRAY: &[u8] = &[
        0x48, 0x89, 0xf0, // +0: mov %rsi,%rax
        0x48, 0xf7, 0xe2, // +3: mul %rdx
        0x48, 0x89, 0xc6, // +6: mov %rax,%rsi
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `posix_memalign`
    const GLIBC_POSIX_MEMALIGN: &[u8] = &[
        0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, // +0: cmpb $0x0,0x140201(%rip)
        0x41, 0x54, // +7: push %r12
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `aligned_alloc` (also memalign)
    const GLIBC_ALIGNED_ALLOC: &[u8] = &[
        0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, // +0: cmpb $0x0,0x140e71(%rip)
        0x74, 0x07, // +7: je 99620 <__libc_memalign@@GLIBC_2.2.5+0x10>
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `valloc`
    const GLIBC_VALLOC: &[u8] = &[
        0x80, 0x3d, 0x31, 0x0e, 0x14, 0x00, 0x00, // +0: cmpb $0x0,0x140e31(%rip)
        0x53, // +7: push %rbx
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `pvalloc`
    const GLIBC_PVALLOC: &[u8] = &[
        0x80, 0x3d, 0x01, 0x0e, 0x14, 0x00, 0x00, // +0: cmpb $0x0,0x140e01(%rip)
        0x53, // +7: push %rbx
    ];

    /// Debian 12 libc6 2.36-9+deb12u14, libc.so.6: `free`
    const GLIBC_FREE: &[u8] = &[
        0x48, 0x85, 0xff, // +0: test %rdi,%rdi
        0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, // +3: je 98fb8 <__libc_free@@GLIBC_2.2.5+0xc8>
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `malloc`
    const JEMALLOC_MALLOC: &[u8] = &[
        0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, // +0: cmp $0x1000,%rdi
        0x0f, 0x87, 0x93, 0x00, 0x00, 0x00, // +7: ja 239b0 <malloc@@Base+0xa0>
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `calloc`
    const JEMALLOC_CALLOC: &[u8] = &[
        0x41, 0x57, // +0: push %r15
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `rallocx`
    const JEMALLOC_RALLOCX: &[u8] = &[
        0x31, 0xc9, // +0: xor %ecx,%ecx
        0xe9, 0xe9, 0x1c, 0xff, 0xff, // +2: jmp 1dab0 <__cxa_finalize@plt+0x14580>
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `free`
    const JEMALLOC_FREE: &[u8] = &[
        0x48, 0x89, 0xf8, // +0: mov %rdi,%rax
        0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, // +3: mov 0xa530e(%rip),%rdx
        0x48, 0x89, 0xf9, // +10: mov %rdi,%rcx
        0x48, 0xc1, 0xe8, 0x1a, // +13: shr $0x1a,%rax
        0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, // +17: and $0xffffffffc0000000,%rcx
        0x25, 0xf0, 0x00, 0x00, 0x00, // +24: and $0xf0,%eax
        0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, // +29: add %fs:0x0,%rax
        0x48, 0x01, 0xd0, // +38: add %rdx,%rax
        0x48, 0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, // +41: cmp 0x1b0(%rax),%rcx
        0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00, // +48: jne 27d20 <free@@Base+0xc0>
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `sdallocx`
    const JEMALLOC_SDALLOCX: &[u8] = &[
        0x49, 0x89, 0xf8, // +0: mov %rdi,%r8
        0x48, 0x81, 0xfe, 0x00, 0x10, 0x00, 0x00, // +3: cmp $0x1000,%rsi
        0x77, 0x0c, // +10: ja 313a8 <sdallocx@@Base+0x18>
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `_Znwm`
    const JEMALLOC_NEW: &[u8] = &[
        0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, // +0: cmp $0x1000,%rdi
        0x0f, 0x87, 0x93, 0x00, 0x00, 0x00, // +7: ja aded0 <_Znwm@@Base+0xa0>
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `_Znam`
    const JEMALLOC_NEW_ARRAY: &[u8] = &[
        0xe9, 0x1b, 0xff, 0xff, 0xff, // +0: jmp ade30 <_Znwm@@Base>
    ];

    /// Debian 12 libjemalloc2 5.3.0-1, libjemalloc.so.2: `_ZdlPvm`
    const JEMALLOC_SIZED_DELETE: &[u8] = &[
        0x48, 0x85, 0xff, // +0: test %rdi,%rdi
        0x74, 0x13, // +3: je ae128 <_ZdlPvm@@Base+0x18>
    ];

    /// Debian 12 libtcmalloc-minimal4 2.10-1, libtcmalloc_minimal.so.4: `malloc`
    const TCMALLOC_MALLOC: &[u8] = &[
        0x48, 0x8b, 0x05, 0x59, 0xab, 0x00, 0x00, // +0: mov 0xab59(%rip),%rax
        0x48, 0x85, 0xc0, // +7: test %rax,%rax
        0x75, 0x75, // +10: jne 1edc1 <__libc_malloc@@Base+0x81>
    ];

    /// Debian 12 libtcmalloc-minimal4 2.10-1, libtcmalloc_minimal.so.4: `calloc`
    const TCMALLOC_CALLOC: &[u8] = &[
        0x41, 0x55, // +0: push %r13
    ];

    /// Debian 12 libtcmalloc-minimal4 2.10-1, libtcmalloc_minimal.so.4: `posix_memalign`
    const TCMALLOC_POSIX_MEMALIGN: &[u8] = &[
        0x48, 0x8d, 0x46, 0xff, // +0: lea -0x1(%rsi),%rax
        0x48, 0x83, 0xc8, 0x07, // +4: or $0x7,%rax
        0x48, 0x85, 0xf0, // +8: test %rsi,%rax
        0x75, 0x2b, // +11: jne 1efe8 <__posix_memalign@@Base+0x38>
    ];

    /// Debian 12 libtcmalloc-minimal4 2.10-1, libtcmalloc_minimal.so.4: `aligned_alloc` (also memalign)
    const TCMALLOC_ALIGNED_ALLOC: &[u8] = &[
        0x49, 0x89, 0xf8, // +0: mov %rdi,%r8
        0x48, 0x81, 0xff, 0x00, 0x20, 0x00, 0x00, // +3: cmp $0x2000,%rdi
        0x0f, 0x87, 0xe8, 0x00, 0x00, 0x00, // +10: ja 1ef38 <__libc_memalign@@Base+0xf8>
    ];

    /// Debian 12 libtcmalloc-minimal4 2.10-1, libtcmalloc_minimal.so.4: `free` (also operator delete)
    const TCMALLOC_FREE: &[u8] = &[
        0x48, 0x8b, 0x05, 0x59, 0xb1, 0x1b, 0x00, // +0: mov 0x1bb159(%rip),%rax
        0x48, 0x85, 0xc0, // +7: test %rax,%rax
        0x0f, 0x85, 0x90, 0x00, 0x00, 0x00, // +10: jne 1d1a0 <_ZdaPv@@Base+0xa0>
    ];

    /// Debian 12 libtcmalloc-minimal4 2.10-1, libtcmalloc_minimal.so.4: `_ZnwmSt11align_val_t`
    const TCMALLOC_ALIGNED_NEW: &[u8] = &[
        0x49, 0x89, 0xf9, // +0: mov %rdi,%r9
        0x49, 0x89, 0xf0, // +3: mov %rsi,%r8
        0x48, 0x81, 0xfe, 0x00, 0x20, 0x00, 0x00, // +6: cmp $0x2000,%rsi
        0x0f, 0x87, 0xbd, 0x00, 0x00, 0x00, // +13: ja 1e860 <_ZnamSt11align_val_t@@Base+0xd0>
    ];

    /// Debian 12 libtcmalloc-minimal4 2.10-1, libtcmalloc_minimal.so.4: `_ZdlPvm`
    const TCMALLOC_SIZED_DELETE: &[u8] = &[
        0x48, 0x8b, 0x05, 0xd9, 0xaf, 0x1b, 0x00, // +0: mov 0x1bafd9(%rip),%rax
        0x48, 0x85, 0xc0, // +7: test %rax,%rax
        0x0f, 0x85, 0x80, 0x00, 0x00, 0x00, // +10: jne 1d310 <_ZdaPvm@@Base+0x90>
    ];

    /// Debian 12 libgoogle-perftools4 2.10-1, libtcmalloc.so.4: `malloc`
    const PERFTOOLS_MALLOC: &[u8] = &[
        0x48, 0x8b, 0x05, 0xf9, 0x32, 0x01, 0x00, // +0: mov 0x132f9(%rip),%rax
        0x49, 0x89, 0xf8, // +7: mov %rdi,%r8
        0x48, 0x85, 0xc0, // +10: test %rax,%rax
        0x0f, 0x85, 0x8e, 0x00, 0x00, 0x00, // +13: jne 39be1 <__libc_malloc@@Base+0xa1>
    ];

    /// Debian 12 libgoogle-perftools4 2.10-1, libtcmalloc.so.4: `calloc`
    const PERFTOOLS_CALLOC: &[u8] = &[
        0x48, 0x8b, 0x0d, 0x19, 0x39, 0x01, 0x00, // +0: mov 0x13919(%rip),%rcx
        0x64, 0x80, 0x79, 0x10, 0x00, // +7: cmpb $0x0,%fs:0x10(%rcx)
        0x0f, 0x85, 0x7e, 0x01, 0x00, 0x00, // +12: jne 38580 <__libc_calloc@@Base+0x190>
    ];

    /// Debian 12 libmimalloc2.0 2.0.9+ds-2, libmimalloc.so.2: `malloc`
    const MIMALLOC_MALLOC: &[u8] = &[
        0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, // +0: mov 0xb449(%rip),%rax
        0x48, 0x89, 0xfe, // +7: mov %rdi,%rsi
        0x64, 0x48, 0x8b, 0x38, // +10: mov %fs:(%rax),%rdi
        0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, // +14: cmp $0x400,%rsi
        0x77, 0x29, // +21: ja 10bb0 <__libc_malloc@@Base+0x40>
    ];

    /// Debian 12 libmimalloc2.0 2.0.9+ds-2, libmimalloc.so.2: `calloc`
    const MIMALLOC_CALLOC: &[u8] = &[
        0x48, 0x8b, 0x15, 0xc9, 0xad, 0x00, 0x00, // +0: mov 0xadc9(%rip),%rdx
        0x48, 0x89, 0xf8, // +7: mov %rdi,%rax
        0x64, 0x48, 0x8b, 0x3a, // +10: mov %fs:(%rdx),%rdi
        0x48, 0x83, 0xf8, 0x01, // +14: cmp $0x1,%rax
        0x74, 0x08, // +18: je 1120c <__libc_calloc@@Base+0x1c>
    ];

    /// Debian 12 libmimalloc2.0 2.0.9+ds-2, libmimalloc.so.2: `realloc`
    const MIMALLOC_REALLOC: &[u8] = &[
        0x48, 0x8b, 0x05, 0x49, 0xa9, 0x00, 0x00, // +0: mov 0xa949(%rip),%rax
        0x48, 0x89, 0xf2, // +7: mov %rsi,%rdx
        0x48, 0x89, 0xfe, // +10: mov %rdi,%rsi
        0x64, 0x48, 0x8b, 0x00, // +13: mov %fs:(%rax),%rax
        0x48, 0x89, 0xc7, // +17: mov %rax,%rdi
        0xe9, 0xf7, 0x4e, 0xff, 0xff, // +20: jmp 6580 <mi_heap_realloc@plt>
    ];

    /// Debian 12 libmimalloc2.0 2.0.9+ds-2, libmimalloc.so.2: `free` (also operator delete)
    const MIMALLOC_FREE: &[u8] = &[
        0x48, 0x89, 0xf9, // +0: mov %rdi,%rcx
        0x48, 0x85, 0xff, // +3: test %rdi,%rdi
        0x74, 0x5d, // +6: je 10f45 <_ZdaPv@@Base+0x65>
    ];

    /// Debian 12 libmimalloc2.0 2.0.9+ds-2, libmimalloc.so.2: `posix_memalign`
    const MIMALLOC_POSIX_MEMALIGN: &[u8] = &[
        0xe9, 0x6b, 0x5c, 0xff, 0xff, // +0: jmp 6510 <mi_posix_memalign@plt>
    ];

    /// Debian 12 libmimalloc2.0 2.0.9+ds-2, libmimalloc.so.2: `_Znwm`
    const MIMALLOC_NEW: &[u8] = &[
        0x55, // +0: push %rbp
    ];

    /// Debian 12 libstdc++6 12.2.0-14+deb12u1, libstdc++.so.6: `_Znwm`
    const LIBSTDCXX_NEW: &[u8] = &[
        0xf3, 0x0f, 0x1e, 0xfa, // +0: endbr64
        0x48, 0x85, 0xff, // +4: test %rdi,%rdi
        0xb8, 0x01, 0x00, 0x00, 0x00, // +7: mov $0x1,%eax
        0x53, // +12: push %rbx
    ];

    /// Debian 12 libstdc++6 12.2.0-14+deb12u1, libstdc++.so.6: `_Znam`
    const LIBSTDCXX_NEW_ARRAY: &[u8] = &[
        0xf3, 0x0f, 0x1e, 0xfa, // +0: endbr64
        0xe9, 0xf7, 0x02, 0xff, 0xff, // +4: jmp 998d0 <_Znwm@plt>
    ];

    /// Debian 12 libstdc++6 12.2.0-14+deb12u1, libstdc++.so.6: `_ZnwmRKSt9nothrow_t`
    const LIBSTDCXX_NEW_NOTHROW: &[u8] = &[
        0xf3, 0x0f, 0x1e, 0xfa, // +0: endbr64
        0x48, 0x83, 0xec, 0x08, // +4: sub $0x8,%rsp
        0xe8, 0x13, 0x03, 0xff, 0xff, // +8: call 998d0 <_Znwm@plt>
    ];

    /// Debian 12 libstdc++6 12.2.0-14+deb12u1, libstdc++.so.6: `_ZnwmSt11align_val_t`
    const LIBSTDCXX_ALIGNED_NEW: &[u8] = &[
        0xf3, 0x0f, 0x1e, 0xfa, // +0: endbr64
        0x55, // +4: push %rbp
    ];

    /// What memmon's probes on `symbol` read (its entry program's arguments; a return probe for
    /// allocating functions).
    fn needs(symbol: &str) -> Needs {
        FAMILY.iter().chain(CXX_NEW).chain(CXX_DELETE).find(|f| f.symbol == symbol).expect(symbol).needs()
    }

    const BASE: u64 = 0x10_0000;

    fn probed<'a>(symbol: &str, address: u64, bytes: &'a [u8]) -> Probed<'a> {
        Probed { code: Code { address, bytes }, whole: true, needs: needs(symbol) }
    }

    /// The site of `symbol`, alone in its object, whose code is `bytes`.
    fn site(symbol: &str, bytes: &[u8]) -> Site {
        choose_sites(&[probed(symbol, BASE, bytes)], &[]).remove(0)
    }

    /// The offset of an emulated site where every argument is still in its ABI register.
    fn emulated_at(symbol: &str, bytes: &[u8]) -> u64 {
        let (offset, relocated) = relocated_at(symbol, bytes);
        assert_eq!(relocated, [], "{symbol}");
        offset
    }

    /// The offset of an emulated site, and the arguments the entry program finds elsewhere there.
    fn relocated_at(symbol: &str, bytes: &[u8]) -> (u64, Vec<(usize, Register)>) {
        let site = site(symbol, bytes);
        assert!(site.emulated && site.kept.is_none(), "{symbol}: {site:?}");
        (site.offset, site.relocated)
    }

    fn stays(obstacle: Obstacle) -> Site {
        Site { offset: 0, emulated: false, kept: Some(obstacle), relocated: Vec::new() }
    }

    #[test]
    fn glibc_sites() {
        assert_eq!(emulated_at("malloc", GLIBC_MALLOC), 0);
        assert_eq!(emulated_at("calloc", GLIBC_CALLOC), 0);
        assert_eq!(emulated_at("realloc", GLIBC_REALLOC), 0);
        // The RIP-relative cmpb is skipped: it only reads memory and sets flags.
        assert_eq!(emulated_at("posix_memalign", GLIBC_POSIX_MEMALIGN), 7);
        assert_eq!(emulated_at("aligned_alloc", GLIBC_ALIGNED_ALLOC), 7);
        assert_eq!(emulated_at("memalign", GLIBC_ALIGNED_ALLOC), 7);
        assert_eq!(emulated_at("valloc", GLIBC_VALLOC), 7);
        assert_eq!(emulated_at("pvalloc", GLIBC_PVALLOC), 7);
        assert_eq!(emulated_at("free", GLIBC_FREE), 3);
        // `mul %rdx` overwrites the size reallocarray's program reads.
        assert_eq!(site("reallocarray", GLIBC_REALLOCARRAY), stays(Obstacle::Writes { at: 3, register: Register::RDX }));
    }

    #[test]
    fn jemalloc_sites() {
        assert_eq!(emulated_at("malloc", JEMALLOC_MALLOC), 7);
        assert_eq!(emulated_at("calloc", JEMALLOC_CALLOC), 0);
        // `xor %ecx,%ecx` writes rcx, which realloc's program does not read.
        assert_eq!(emulated_at("rallocx", JEMALLOC_RALLOCX), 2);
        // Nine loads and arithmetic into rax, rcx, rdx: rdi, the pointer, is only read.
        assert_eq!(emulated_at("free", JEMALLOC_FREE), 48);
        assert_eq!(emulated_at("sdallocx", JEMALLOC_SDALLOCX), 10);
        assert_eq!(emulated_at("_Znwm", JEMALLOC_NEW), 7);
        assert_eq!(emulated_at("_Znam", JEMALLOC_NEW_ARRAY), 0);
        assert_eq!(emulated_at("_ZdlPvm", JEMALLOC_SIZED_DELETE), 3);
    }

    #[test]
    fn tcmalloc_sites() {
        assert_eq!(emulated_at("malloc", TCMALLOC_MALLOC), 10);
        assert_eq!(emulated_at("calloc", TCMALLOC_CALLOC), 0);
        // lea/or into rax: posix_memalign's program reads rdi and rdx.
        assert_eq!(emulated_at("posix_memalign", TCMALLOC_POSIX_MEMALIGN), 11);
        // `mov %rdi,%r8` copies the alignment; aligned_alloc's program reads the size in rsi.
        assert_eq!(emulated_at("aligned_alloc", TCMALLOC_ALIGNED_ALLOC), 10);
        assert_eq!(emulated_at("free", TCMALLOC_FREE), 10);
        assert_eq!(emulated_at("_ZdlPv", TCMALLOC_FREE), 10);
        assert_eq!(emulated_at("_ZnwmSt11align_val_t", TCMALLOC_ALIGNED_NEW), 13);
        assert_eq!(emulated_at("_ZdlPvm", TCMALLOC_SIZED_DELETE), 10);
        // libgoogle-perftools4's tcmalloc, built with more checks.
        assert_eq!(emulated_at("malloc", PERFTOOLS_MALLOC), 13);
        assert_eq!(emulated_at("calloc", PERFTOOLS_CALLOC), 12);
    }

    #[test]
    fn mimalloc_sites() {
        assert_eq!(emulated_at("free", MIMALLOC_FREE), 6);
        assert_eq!(emulated_at("_ZdlPv", MIMALLOC_FREE), 6);
        assert_eq!(emulated_at("posix_memalign", MIMALLOC_POSIX_MEMALIGN), 0);
        assert_eq!(emulated_at("_Znwm", MIMALLOC_NEW), 0);
        // mimalloc copies its arguments aside to pass the thread's heap first (`mov
        // %fs:(%rax),%rdi`) before its first branch: the entry program reads the copies.
        assert_eq!(relocated_at("malloc", MIMALLOC_MALLOC), (21, vec![(0, Register::RSI)]));
        assert_eq!(relocated_at("calloc", MIMALLOC_CALLOC), (18, vec![(0, Register::RAX)]));
        assert_eq!(relocated_at("realloc", MIMALLOC_REALLOC), (20, vec![(0, Register::RSI), (1, Register::RDX)]));
    }

    #[test]
    fn libstdcxx_sites() {
        // endbr64, a test and `mov $1,%eax` before `push %rbx`.
        assert_eq!(emulated_at("_Znwm", LIBSTDCXX_NEW), 12);
        assert_eq!(emulated_at("_Znam", LIBSTDCXX_NEW_ARRAY), 4);
        assert_eq!(emulated_at("_ZnwmSt11align_val_t", LIBSTDCXX_ALIGNED_NEW), 4);
        // `sub $8,%rsp` before the call: the return address is no longer at the stack pointer.
        assert_eq!(site("_ZnwmRKSt9nothrow_t", LIBSTDCXX_NEW_NOTHROW), stays(Obstacle::Writes { at: 4, register: Register::RSP }));
    }

    // Branches into the skipped instructions, on small functions. `CMP_JA` is jemalloc's malloc
    // prefix: `cmp $0x1000,%rdi; ja +0x93`, site +7.
    const CMP_JA: [u8; 13] = [0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x87, 0x93, 0x00, 0x00, 0x00];

    fn with(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
        [prefix, rest].concat()
    }

    #[test]
    fn a_branch_of_the_function_into_the_skipped_instructions_keeps_the_entry() {
        // +13: jmp +7 (to the site itself); +15: ret
        let code = with(&CMP_JA, &[0xeb, 0xf8, 0xc3]);
        assert_eq!(site("malloc", &code), stays(Obstacle::BranchInto { from: BASE + 13, to: 7 }));
        // +13: jne +3 (the middle of the cmp's bytes, as a decoder would see a jump there)
        let code = with(&CMP_JA, &[0x75, 0xf4, 0xc3]);
        assert_eq!(site("malloc", &code), stays(Obstacle::BranchInto { from: BASE + 13, to: 3 }));
        // A branch back to the entry passes the entry again: harmless.
        let code = with(&CMP_JA, &[0xeb, 0xf1, 0xc3]);
        assert_eq!(emulated_at("malloc", &code), 7);
        // A branch past the site: harmless.
        let code = with(&CMP_JA, &[0xeb, 0xfe, 0xc3]);
        assert_eq!(emulated_at("malloc", &code), 7);
    }

    #[test]
    fn a_branch_from_elsewhere_in_the_object_keeps_the_entry() {
        let code = with(&CMP_JA, &[0xc3]);
        // Another function, 0x100 bytes on: `jmp rel32` to BASE + 5, or `call rel32` to BASE + 7.
        let other = BASE + 0x100;
        let jump = [0xe9, 0x00, 0xff, 0xff, 0xff];
        let call = [0xe8, 0x02, 0xff, 0xff, 0xff];
        for (bytes, to) in [(&jump, 5), (&call, 7)] {
            let elsewhere = Code { address: other, bytes };
            let sites = choose_sites(&[probed("malloc", BASE, &code)], &[elsewhere]);
            assert_eq!(sites[0], stays(Obstacle::BranchInto { from: other, to }), "{bytes:x?}");
        }
        // Jumping or calling to the entry is what callers do.
        let tail_call = Code { address: other, bytes: &[0xe9, 0xfb, 0xfe, 0xff, 0xff] };
        let call = Code { address: other + 5, bytes: &[0xe8, 0xf6, 0xfe, 0xff, 0xff] };
        let sites = choose_sites(&[probed("malloc", BASE, &code)], &[tail_call, call]);
        assert_eq!(sites[0].offset, 7, "{sites:?}");
    }

    #[test]
    fn another_function_starting_among_the_skipped_instructions_keeps_the_entry() {
        let code = with(&CMP_JA, &[0xc3]);
        let inner = &code[3..];
        // Another probed function...
        let sites = choose_sites(&[probed("malloc", BASE, &code), probed("free", BASE + 3, inner)], &[]);
        assert_eq!(sites[0], stays(Obstacle::SymbolInside { at: 3 }));
        // ... or any function symbol: other objects may call it through the PLT.
        let pieces = [Code { address: BASE, bytes: &code[..3] }, Code { address: BASE + 3, bytes: inner }];
        let sites = choose_sites(&[probed("malloc", BASE, &code)], &pieces);
        assert_eq!(sites[0], stays(Obstacle::SymbolInside { at: 3 }));
        // At the site itself, too.
        let pieces = [Code { address: BASE, bytes: &code[..7] }, Code { address: BASE + 7, bytes: &code[7..] }];
        assert_eq!(choose_sites(&[probed("malloc", BASE, &code)], &pieces)[0], stays(Obstacle::SymbolInside { at: 7 }));
        // A symbol at the entry (an alias, or the function's own) or past the site is no obstacle.
        let pieces = [Code { address: BASE, bytes: &code[..8] }, Code { address: BASE + 8, bytes: &code[8..] }];
        assert_eq!(choose_sites(&[probed("malloc", BASE, &code)], &pieces)[0].offset, 7);
    }

    #[test]
    fn indirect_jumps_in_the_function_keep_the_entry_unless_through_the_got() {
        // +13: jmp *%rax (a jump table could land anywhere in the function)
        let code = with(&CMP_JA, &[0xff, 0xe0]);
        assert_eq!(site("malloc", &code), stays(Obstacle::IndirectJump { at: 13 }));
        // +13: jmp *0x100(%rip) (a tail call through the GOT lands on a function's entry)
        let code = with(&CMP_JA, &[0xff, 0x25, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!(emulated_at("malloc", &code), 7);
    }

    #[test]
    fn skipped_instructions_may_write_only_what_the_probes_do_not_read() {
        // mov %rdi,%rax ; push %rbp: rax is scratch.
        assert_eq!(emulated_at("malloc", &[0x48, 0x89, 0xf8, 0x55]), 3);
        // mov %rsi,%rdi ; push %rbp: malloc's size is gone; free's pointer too.
        for symbol in ["malloc", "free"] {
            let writes_rdi = stays(Obstacle::Writes { at: 0, register: Register::RDI });
            assert_eq!(site(symbol, &[0x48, 0x89, 0xf7, 0x55]), writes_rdi);
        }
        // The same for a 32-bit write (xor %edi,%edi zero-extends into rdi).
        assert_eq!(site("malloc", &[0x31, 0xff, 0x55]), stays(Obstacle::Writes { at: 0, register: Register::RDI }));
        // mov %rdi,%rax ; mov %rsi,%rdi ; push: the size survives in rax, where the program reads it.
        assert_eq!(relocated_at("malloc", &[0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x55]), (6, vec![(0, Register::RAX)]));
        // ... unless rax is overwritten too (mov $1,%eax).
        let lost = [0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(site("malloc", &lost), stays(Obstacle::Writes { at: 6, register: Register::RAX }));
        // mov %edi,%eax copies only the low half: not a copy of the size.
        assert_eq!(site("malloc", &[0x89, 0xf8, 0x48, 0x89, 0xf7, 0x55]), stays(Obstacle::Writes { at: 2, register: Register::RDI }));
        // A copy back to the ABI register needs no relocation: mov %rdi,%rax ; mov %rsi,%rdi ; mov %rax,%rdi.
        assert_eq!(emulated_at("malloc", &[0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x89, 0xc7, 0x55]), 9);
        // mov $0,%esi writes the size realloc reads, not malloc's argument.
        assert_eq!(emulated_at("malloc", &[0xbe, 0x00, 0x00, 0x00, 0x00, 0x55]), 5);
        assert_eq!(site("realloc", &[0xbe, 0x00, 0x00, 0x00, 0x00, 0x55]), stays(Obstacle::Writes { at: 0, register: Register::RSI }));
        // sub $0x18,%rsp ; push %rbp: the stack pointer keys calls in flight.
        assert_eq!(site("free", &[0x48, 0x83, 0xec, 0x18, 0x55]), stays(Obstacle::Writes { at: 0, register: Register::RSP }));
        // movl $0xc,%fs:(%rax) ; push: a store elsewhere runs natively, as it would untraced.
        assert_eq!(emulated_at("malloc", &[0x64, 0xc7, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x55]), 7);
    }

    #[test]
    fn a_return_probe_needs_the_return_address_left_alone() {
        // mov %rdi,(%rsp) ; push %rbp
        let overwrites = [0x48, 0x89, 0x3c, 0x24, 0x55];
        assert_eq!(site("malloc", &overwrites), stays(Obstacle::WritesReturnAddress { at: 0 }));
        // free has no return probe.
        assert_eq!(emulated_at("free", &overwrites), 4);
        // mov %rdi,-0x8(%rsp) ; push %rbp: a red-zone store below the return address.
        assert_eq!(emulated_at("malloc", &[0x48, 0x89, 0x7c, 0x24, 0xf8, 0x55]), 5);
        // mov %rdi,0x8(%rsp): the caller's stack arguments, above it.
        assert_eq!(emulated_at("malloc", &[0x48, 0x89, 0x7c, 0x24, 0x08, 0x55]), 5);
        // movb $0,0x7(%rsp): the return address's last byte.
        assert_eq!(site("malloc", &[0xc6, 0x44, 0x24, 0x07, 0x00, 0x55]), stays(Obstacle::WritesReturnAddress { at: 0 }));
    }

    #[test]
    fn only_straight_line_code_within_the_window_is_skipped() {
        // test %rdi,%rdi ; ret
        assert_eq!(site("free", &[0x48, 0x85, 0xff, 0xc3, 0x55]), stays(Obstacle::NotStraightLine { at: 3 }));
        // test %rdi,%rdi ; call *%rax: an indirect call is not emulated and not straight-line.
        assert_eq!(site("free", &[0x48, 0x85, 0xff, 0xff, 0xd0]), stays(Obstacle::NotStraightLine { at: 3 }));
        // WINDOW movs, then a push: too far.
        let far: Vec<u8> = [0x48, 0x89, 0xc0].repeat(WINDOW).into_iter().chain([0x55]).collect();
        assert_eq!(site("malloc", &far), stays(Obstacle::NoEmulatedInstruction { window: WINDOW }));
        let near: Vec<u8> = [0x48, 0x89, 0xc0].repeat(WINDOW - 1).into_iter().chain([0x55]).collect();
        assert_eq!(emulated_at("malloc", &near), 3 * (WINDOW as u64 - 1));
        // A function that ends first.
        assert_eq!(site("malloc", &[0x48, 0x89, 0xc0]), stays(Obstacle::NoEmulatedInstruction { window: WINDOW }));
    }

    #[test]
    fn the_kernel_emulates_plain_pushes_and_relative_branches_only() {
        assert_eq!(emulated_at("malloc", &[0x55]), 0); // push %rbp
        assert_eq!(emulated_at("malloc", &[0x41, 0x57]), 0); // push %r15
        assert_eq!(emulated_at("malloc", &[0xe9, 0, 0, 0, 0]), 0); // jmp rel32
        assert_eq!(emulated_at("malloc", &[0xe8, 0, 0, 0, 0]), 0); // call rel32
        assert_eq!(emulated_at("malloc", &[0x0f, 0x84, 0, 0, 0, 0]), 0); // je rel32
        // push %rbp with a REX.W prefix: push_setup_xol_ops accepts only 0x41, so this push is
        // single-stepped, and moving past it would move the stack pointer.
        assert_eq!(site("malloc", &[0x48, 0x55, 0x55]), stays(Obstacle::Writes { at: 0, register: Register::RSP }));
        // endbr64 is single-stepped: skipped, as libstdc++'s operators start with it.
        assert_eq!(emulated_at("malloc", &[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
    }

    #[test]
    fn without_the_whole_function_or_with_choice_off_the_entry_stays() {
        let prefix = Probed { code: Code { address: BASE, bytes: &CMP_JA }, whole: false, needs: needs("malloc") };
        assert_eq!(choose_sites(&[prefix], &[])[0], stays(Obstacle::UnknownSize));
        let prefix = Probed { code: Code { address: BASE, bytes: GLIBC_MALLOC }, whole: false, needs: needs("malloc") };
        assert_eq!(choose_sites(&[prefix], &[])[0], Site { offset: 0, emulated: true, kept: None, relocated: Vec::new() });
        assert_eq!(entry_site(JEMALLOC_MALLOC), stays(Obstacle::Disabled));
        assert_eq!(entry_site(GLIBC_MALLOC), Site { offset: 0, emulated: true, kept: None, relocated: Vec::new() });
    }
}
