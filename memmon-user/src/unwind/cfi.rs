//! Compiling an object's call frame information (`.eh_frame`, and `.debug_frame` for code it
//! does not cover) into the kernel walker's compact rows.
//!
//! gimli evaluates each FDE's CFI program into rows (address range → rules). Of each row the
//! walker needs three things: how to get the CFA (rsp or rbp plus an offset, or the PLT
//! expression), whether the return address is at CFA - 8 or undefined (the outermost frame),
//! and where the caller's rbp was saved. Everything else a row may say (callee-saved registers
//! other than rbp) does not matter for finding return addresses. Rows the walker cannot follow
//! are kept as UNSUPPORTED, and the gaps between functions as NONE, so that an address is never
//! unwound with a neighbouring function's rule.

use anyhow::{Context as _, Result, bail};
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Reader as _, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use memmon_common::unwind::{PAGE_SHIFT, PageRows, RBP_LOST, RBP_UNCHANGED, Row, kind};
use object::{Object as _, ObjectSection as _};

/// The unwind table of one object, ready to be copied into the kernel's tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledTable {
    /// ELF virtual address that `rows[].pc` count from (page aligned).
    pub base: u64,
    pub rows: Vec<Row>,
    /// Per 256-byte page of code from `base`: the first and last row index a lookup in the page may need.
    pub pages: Vec<PageRows>,
    /// FDE rows whose rules the walker cannot follow (kept as UNSUPPORTED rows).
    pub unsupported_rows: usize,
}

/// A row before compaction: its address is still absolute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    address: u64,
    kind: u8,
    cfa_offset: i16,
    rbp: i8,
}

impl Rule {
    fn gap(address: u64) -> Self {
        Self { address, kind: kind::NONE, cfa_offset: 0, rbp: RBP_UNCHANGED }
    }

    fn same_unwind(&self, other: &Rule) -> bool {
        (self.kind, self.cfa_offset, self.rbp) == (other.kind, other.cfa_offset, other.rbp)
    }
}

/// Compiles the CFI of an ELF object. An object with no CFI at all gives an empty table.
pub fn compile(elf: &[u8]) -> Result<CompiledTable> {
    let file = object::File::parse(elf).context("not an ELF object")?;
    if file.architecture() != object::Architecture::X86_64 {
        bail!("unwind tables are built for x86-64 objects only (this one is {:?})", file.architecture());
    }
    let address_of = |name: &str| file.section_by_name(name).map(|s| s.address());
    let mut bases = BaseAddresses::default();
    if let Some(address) = address_of(".text") {
        bases = bases.set_text(address);
    }
    if let Some(address) = address_of(".got") {
        bases = bases.set_got(address);
    }
    if let Some(address) = address_of(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(address);
    }
    let mut functions: Vec<Vec<Rule>> = Vec::new();
    let mut unsupported = 0;
    if let Some(section) = file.section_by_name(".eh_frame") {
        let bases = bases.clone().set_eh_frame(section.address());
        let data = section.uncompressed_data().context("reading .eh_frame")?;
        let eh_frame = EhFrame::new(&data, LittleEndian);
        read_section(&eh_frame, &bases, &mut functions, &mut unsupported).context("parsing .eh_frame")?;
    }
    if let Some(section) = file.section_by_name(".debug_frame") {
        let data = section.uncompressed_data().context("reading .debug_frame")?;
        let mut debug_frame = DebugFrame::new(&data, LittleEndian);
        debug_frame.set_address_size(8);
        let mut extra = Vec::new();
        read_section(&debug_frame, &bases, &mut extra, &mut unsupported).context("parsing .debug_frame")?;
        // .eh_frame is what the program's own unwinder uses: it wins where both cover code.
        let covered: Vec<(u64, u64)> = functions.iter().map(|f| span(f)).collect();
        extra.retain(|f| {
            let (start, end) = span(f);
            !covered.iter().any(|&(s, e)| start < e && s < end)
        });
        functions.extend(extra);
    }
    Ok(layout(functions, unsupported))
}

/// [first row's address, end) of one function's rules (the last rule is its end gap).
fn span(function: &[Rule]) -> (u64, u64) {
    (function[0].address, function[function.len() - 1].address)
}

fn read_section<'data, S>(
    section: &S,
    bases: &BaseAddresses,
    functions: &mut Vec<Vec<Rule>>,
    unsupported: &mut usize,
) -> Result<()>
where
    S: UnwindSection<EndianSlice<'data, LittleEndian>>,
{
    let mut context = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else { continue };
        let fde = match partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset)) {
            Ok(fde) => fde,
            Err(err) => {
                log::debug!("skipping an FDE: {err}");
                continue;
            }
        };
        if fde.len() == 0 {
            continue;
        }
        let mut rules = Vec::new();
        let mut table = fde.rows(section, bases, &mut context)?;
        while let Some(row) = table.next_row()? {
            if row.start_address() >= row.end_address() {
                continue;
            }
            let rule = translate(section, row.start_address(), row.cfa(), row.register(X86_64::RA), row.register(X86_64::RBP));
            if rule.kind == kind::UNSUPPORTED {
                *unsupported += 1;
            }
            rules.push(rule);
        }
        if !rules.is_empty() {
            rules.push(Rule::gap(fde.end_address()));
            functions.push(rules);
        }
    }
    Ok(())
}

/// One gimli row in the walker's terms.
fn translate<'data, S>(
    section: &S,
    address: u64,
    cfa: &CfaRule<usize>,
    return_address: Option<RegisterRule<usize>>,
    rbp: Option<RegisterRule<usize>>,
) -> Rule
where
    S: UnwindSection<EndianSlice<'data, LittleEndian>>,
{
    let unsupported = Rule { address, kind: kind::UNSUPPORTED, cfa_offset: 0, rbp: RBP_UNCHANGED };
    match return_address {
        Some(RegisterRule::Undefined) => return Rule { address, kind: kind::END, cfa_offset: 0, rbp: RBP_UNCHANGED },
        Some(RegisterRule::Offset(-8)) => {}
        _ => return unsupported,
    }
    let (kind, cfa_offset) = match *cfa {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i16::try_from(offset) else { return unsupported };
            match register {
                X86_64::RSP => (kind::CFA_RSP, offset),
                X86_64::RBP => (kind::CFA_RBP, offset),
                _ => return unsupported,
            }
        }
        CfaRule::Expression(ref expression) => {
            let Some(bytes) = expression.get(section).ok().and_then(|e| e.0.to_slice().ok().map(|s| s.to_vec()))
            else {
                return unsupported;
            };
            match plt_threshold(&bytes) {
                Some(threshold) => (kind::PLT, threshold),
                None => return unsupported,
            }
        }
    };
    let rbp = match rbp {
        // Registers the CFI does not mention keep their value (what GCC and LLVM assume).
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => RBP_UNCHANGED,
        Some(RegisterRule::Offset(offset)) if offset % 8 == 0 && offset != 0 => {
            i8::try_from(offset / 8).ok().filter(|&slot| slot != RBP_LOST).unwrap_or(RBP_LOST)
        }
        Some(_) => RBP_LOST,
    };
    Rule { address, kind, cfa_offset, rbp }
}

/// The CFA expression the GNU and LLVM linkers emit for lazy-binding `.plt` entries:
/// `rsp + 8 + (((rip & 15) >= N) << 3)` — the entry's `push` moves rsp after its first N bytes.
/// Returns N.
fn plt_threshold(expression: &[u8]) -> Option<i16> {
    const DW_OP_LIT0: u8 = 0x30;
    match expression {
        // breg7 (rsp) 8; breg16 (rip) 0; lit15; and; litN; ge; lit3; shl; plus
        [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22] if (DW_OP_LIT0..=DW_OP_LIT0 + 31).contains(lit) => {
            Some((lit - DW_OP_LIT0) as i16)
        }
        _ => None,
    }
}

/// Sorts the functions' rules into one row list (gaps between functions as NONE rows, identical
/// neighbours merged) relative to a page-aligned base, and builds the page index.
fn layout(mut functions: Vec<Vec<Rule>>, unsupported_rows: usize) -> CompiledTable {
    functions.retain(|f| f.len() >= 2);
    if functions.is_empty() {
        return CompiledTable::default();
    }
    functions.sort_by_key(|f| f[0].address);
    let mut rules: Vec<Rule> = Vec::new();
    for function in functions {
        // Overlapping FDEs (rare, and a linker bug): the later-starting one takes over.
        while rules.last().is_some_and(|last| last.address >= function[0].address) {
            rules.pop();
        }
        rules.extend(function);
    }
    let base = rules[0].address & !((1 << PAGE_SHIFT) - 1);
    let end = rules[rules.len() - 1].address;
    if end - base > u32::MAX as u64 {
        // An object whose code spans more than 4 GiB: not representable; no table.
        return CompiledTable { unsupported_rows, ..CompiledTable::default() };
    }
    let mut rows: Vec<Row> = Vec::with_capacity(rules.len());
    let mut previous: Option<Rule> = None;
    for rule in rules {
        if previous.is_some_and(|p| p.same_unwind(&rule)) {
            continue;
        }
        previous = Some(rule);
        let row = Row { pc: (rule.address - base) as u32, cfa_offset: rule.cfa_offset, kind: rule.kind, rbp: rule.rbp };
        match rows.last_mut() {
            // A zero-length row (a function ending where the next starts): the later one wins.
            Some(last) if last.pc == row.pc => *last = row,
            _ => rows.push(row),
        }
    }
    let pages = page_index(&rows);
    CompiledTable { base, rows, pages, unsupported_rows }
}

/// For each page, the rows a lookup of an address in it may land on: from the row in effect at
/// the page's first byte to the last row starting inside the page.
fn page_index(rows: &[Row]) -> Vec<PageRows> {
    let page_count = (rows[rows.len() - 1].pc >> PAGE_SHIFT) as usize + 1;
    let mut pages = Vec::with_capacity(page_count);
    let mut next = 0usize; // first row starting at or after the page's start
    for page in 0..page_count {
        let start = (page as u64) << PAGE_SHIFT;
        let end = start + (1 << PAGE_SHIFT);
        while next < rows.len() && (rows[next].pc as u64) < start {
            next += 1;
        }
        let first = if next < rows.len() && rows[next].pc as u64 == start { next } else { next.saturating_sub(1) };
        let mut last = next;
        while last + 1 < rows.len() && (rows[last + 1].pc as u64) < end {
            last += 1;
        }
        let last = if last < rows.len() && (rows[last].pc as u64) < end { last } else { last.saturating_sub(1) };
        pages.push(PageRows { first: first as u32, last: last.max(first) as u32 });
    }
    pages
}

/// The row in effect at `address` (an ELF virtual address), as the kernel finds it: the unit
/// tests' reference for the kernel's search.
pub fn lookup(table: &CompiledTable, address: u64) -> Option<Row> {
    let offset = address.checked_sub(table.base)?;
    let page = table.pages.get((offset >> PAGE_SHIFT) as usize)?;
    let candidates = &table.rows[page.first as usize..=page.last as usize];
    let index = candidates.partition_point(|row| row.pc as u64 <= offset);
    (index > 0).then(|| candidates[index - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(address: u64, kind: u8, cfa_offset: i16, rbp: i8) -> Rule {
        Rule { address, kind, cfa_offset, rbp }
    }

    #[test]
    fn gaps_between_functions_are_none_rows_and_neighbours_merge() {
        let f = vec![rule(0x1000, kind::CFA_RSP, 8, 0), rule(0x1001, kind::CFA_RSP, 16, -2), Rule::gap(0x1010)];
        let g = vec![rule(0x1010, kind::CFA_RSP, 8, 0), Rule::gap(0x1020)];
        let h = vec![rule(0x3000, kind::CFA_RSP, 8, 0), rule(0x3004, kind::CFA_RSP, 8, 0), Rule::gap(0x3008)];
        let table = layout(vec![h, g, f], 0);
        assert_eq!(table.base, 0x1000);
        let pcs: Vec<(u32, u8)> = table.rows.iter().map(|r| (r.pc, r.kind)).collect();
        assert_eq!(
            pcs,
            [(0, kind::CFA_RSP), (1, kind::CFA_RSP), (0x10, kind::CFA_RSP), (0x20, kind::NONE), (0x2000, kind::CFA_RSP), (0x2008, kind::NONE)]
        );
        assert_eq!(lookup(&table, 0x1005).unwrap().cfa_offset, 16);
        assert_eq!(lookup(&table, 0x1015).unwrap().cfa_offset, 8);
        assert_eq!(lookup(&table, 0x1800).unwrap().kind, kind::NONE);
        assert_eq!(lookup(&table, 0x2fff).unwrap().kind, kind::NONE);
        assert_eq!(lookup(&table, 0x3007).unwrap().kind, kind::CFA_RSP);
        assert_eq!(lookup(&table, 0x3008).unwrap().kind, kind::NONE);
        assert_eq!(lookup(&table, 0xfff), None);
        assert_eq!(lookup(&table, 0x4000), None);
    }

    #[test]
    fn page_index_brackets_every_lookup() {
        // Rows every 0x300 bytes over several pages: each page's bracket must contain the
        // row a full binary search finds.
        let mut function: Vec<Rule> = (0..40).map(|i| rule(0x10_0000 + i * 0x300, kind::CFA_RSP, (i % 5) as i16 * 8 + 8, 0)).collect();
        function.push(Rule::gap(0x10_0000 + 40 * 0x300));
        let table = layout(vec![function], 0);
        for address in (table.base..table.base + 40 * 0x300).step_by(7) {
            let expected = table.rows[table.rows.partition_point(|r| r.pc as u64 <= address - table.base) - 1];
            assert_eq!(lookup(&table, address), Some(expected), "{address:#x}");
        }
    }

    #[test]
    fn plt_expression_is_recognized() {
        assert_eq!(plt_threshold(&[0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22]), Some(11));
        assert_eq!(plt_threshold(&[0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3a, 0x2a, 0x33, 0x24, 0x22]), Some(10));
        assert_eq!(plt_threshold(&[0x77, 0x10]), None);
    }

    #[test]
    fn compiles_this_test_binary() {
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let table = compile(&data).unwrap();
        assert!(table.rows.len() > 1000, "{} rows", table.rows.len());
        // This very function has CFI, and its address (relative to the executable's load
        // bias) is covered by a followable row.
        let here = compiles_this_test_binary as fn() as usize as u64;
        let bias = crate::unwind::maps::load_bias_of_self(here);
        let row = lookup(&table, here - bias + 4).unwrap();
        assert!(matches!(row.kind, kind::CFA_RSP | kind::CFA_RBP), "{row:?}");
    }

    #[test]
    fn glibc_has_an_end_row_at_start_and_plt_rows() {
        let Ok(data) = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6") else { return };
        let table = compile(&data).unwrap();
        let kinds = |k| table.rows.iter().filter(|r| r.kind == k).count();
        assert!(kinds(kind::END) >= 1, "clone3/start_thread mark their return address undefined");
        assert!(kinds(kind::PLT) >= 1, "libc's .plt has the lazy-binding expression");
        assert!(table.rows.len() > 10_000);
    }
}
