//! Choosing where exactly to place an entry-only probe (free and its kin).
//!
//! A uprobe traps on the probed instruction, and the kernel then either emulates it (x86-64:
//! `push reg`, and relative `jmp`/`call`/`jcc`) or single-steps a copy of it out of line, which
//! costs several microseconds more per hit. glibc's `free` starts with `test %rdi,%rdi` — not
//! emulated — followed by `je` — emulated. Moving the probe to the `je` is safe when:
//!
//! - every instruction skipped is straight-line (no branch, call or return), so every call that
//!   enters the function reaches the new site by falling through;
//! - every instruction skipped writes nothing but flags (no register, no memory, no stack
//!   pointer), so the new site sees the same arguments and stack pointer as the entry did.
//!
//! Entry probes of allocating functions stay at the entry: their return probe must be there
//! (it reads the return address at the stack pointer), and both share the one trap.

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, Register};

/// How far to look for an emulated instruction.
const MAX_SKIPPED: usize = 3;

/// The offset (from the function's first byte) to probe, given the function's first bytes.
/// Returns 0 — the entry — unless a later site is provably equivalent and cheaper.
pub fn entry_only_offset(code: &[u8]) -> u64 {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    for _ in 0..=MAX_SKIPPED {
        if !decoder.can_decode() {
            break;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            break;
        }
        if kernel_emulates(&instruction) {
            return instruction.ip();
        }
        let skippable = instruction.flow_control() == FlowControl::Next
            && info.info(&instruction).used_memory().is_empty()
            && info.info(&instruction).used_registers().iter().all(|used| {
                matches!(used.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess)
                    && used.register() != Register::RSP
            });
        if !skippable {
            break;
        }
    }
    0
}

/// Instructions the x86-64 uprobe code emulates instead of single-stepping
/// (arch/x86/kernel/uprobes.c: `branch_setup_xol_ops`, `push_setup_xol_ops`).
fn kernel_emulates(instruction: &iced_x86::Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Push => matches!(instruction.code(), Code::Push_r64),
        Mnemonic::Jmp | Mnemonic::Call => {
            matches!(instruction.code(), Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64)
        }
        _ => instruction.flow_control() == FlowControl::ConditionalBranch && instruction.is_jcc_short_or_near(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_free_moves_to_the_je() {
        // test %rdi,%rdi ; je +0xbf ; push %rbp
        let code = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(entry_only_offset(&code), 3);
    }

    #[test]
    fn an_emulated_first_instruction_stays() {
        assert_eq!(entry_only_offset(&[0x55, 0x48, 0x89, 0xe5]), 0); // push %rbp
        assert_eq!(entry_only_offset(&[0x41, 0x54, 0x55]), 0); // push %r12
    }

    #[test]
    fn writes_to_registers_or_memory_are_not_skipped() {
        // mov %rdi,%rax ; push %rbp: the mov writes a register.
        assert_eq!(entry_only_offset(&[0x48, 0x89, 0xf8, 0x55]), 0);
        // sub $0x18,%rsp ; push %rbp: moves the stack pointer.
        assert_eq!(entry_only_offset(&[0x48, 0x83, 0xec, 0x18, 0x55]), 0);
        // cmpb $0,0x10(%rip) ; push: reads memory (could fault), not skipped.
        assert_eq!(entry_only_offset(&[0x80, 0x3d, 0x10, 0x00, 0x00, 0x00, 0x00, 0x55]), 0);
    }

    #[test]
    fn branches_end_the_search() {
        // ret
        assert_eq!(entry_only_offset(&[0xc3, 0x55]), 0);
        // endbr64 ; push %rbp: endbr64 is straight-line and writes nothing: skipped.
        assert_eq!(entry_only_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
    }
}
