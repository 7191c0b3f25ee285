//! The assembler the programs are written with: instructions as the kernel reads them,
//! registers, and [`Asm`], which builds a loop-free program whose branches end in a
//! [`Verdict`] or an exit of its own, resolving its jumps.

use super::Map;

/// One eBPF instruction, as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Registers: r0 holds results, r1-r5 arguments (clobbered by calls), r6-r9 survive
/// calls, r10 is the read-only frame pointer.
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R4: Reg = 4;
pub const R5: Reg = 5;
pub const R6: Reg = 6;
pub const R7: Reg = 7;
pub const R8: Reg = 8;
pub const R9: Reg = 9;
pub const R10: Reg = 10;

/// Access sizes.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    W = 0x00,
    H = 0x08,
    B = 0x10,
    DW = 0x18,
}

const LDX_MEM: u8 = 0x61; // BPF_LDX | BPF_MEM, size added
const ST_MEM: u8 = 0x62; // BPF_ST | BPF_MEM, size added
const STX_MEM: u8 = 0x63; // BPF_STX | BPF_MEM, size added
const STX_ATOMIC: u8 = 0xc3; // BPF_STX | BPF_ATOMIC, size added
const ATOMIC_FETCH_ADD: i32 = 0x01; // BPF_ADD | BPF_FETCH
const ALU_K: u8 = 0x04; // BPF_ALU (32 bits, zero-extended) | BPF_K, op added
const ALU64_K: u8 = 0x07; // BPF_ALU64 | BPF_K, op added
const ALU64_X: u8 = 0x0f; // BPF_ALU64 | BPF_X, op added
const OP_ADD: u8 = 0x00;
const OP_DIV: u8 = 0x30;
const OP_OR: u8 = 0x40;
const OP_AND: u8 = 0x50;
const OP_LSH: u8 = 0x60;
const OP_RSH: u8 = 0x70;
const OP_MOD: u8 = 0x90;
const OP_MOV: u8 = 0xb0;
const JMP_K: u8 = 0x05; // BPF_JMP | BPF_K, op added
const JMP_X: u8 = 0x0d; // BPF_JMP | BPF_X, op added
const OP_JA: u8 = 0x00;
const OP_JGT: u8 = 0x20;
const OP_JEQ: u8 = 0x10;
const OP_JNE: u8 = 0x50;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// Where a jump goes: the program ends with `Deny` (r0 = 0) then `Allow` (r0 = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deny,
    Allow,
}

/// A place in a program, made by [`Asm::label`] and put at the next instruction by
/// [`Asm::here`]. Jumps to it must come before it: programs are loop-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// What a jump names: one of the closing verdicts, or a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Verdict(Verdict),
    Label(Label),
}

impl From<Verdict> for Target {
    fn from(v: Verdict) -> Target {
        Target::Verdict(v)
    }
}

impl From<Label> for Target {
    fn from(l: Label) -> Target {
        Target::Label(l)
    }
}

/// Builds a program whose every branch ends in a [`Verdict`] or an exit of its own.
#[derive(Default)]
pub struct Asm {
    prog: Vec<Insn>,
    jumps: Vec<(usize, Target)>,
    /// Where each label stands, once placed.
    labels: Vec<Option<usize>>,
}

fn ins(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

impl Asm {
    fn push(&mut self, i: Insn) -> &mut Asm {
        self.prog.push(i);
        self
    }

    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_MOV, dst, src, 0, 0))
    }

    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_MOV, dst, 0, 0, imm))
    }

    /// dst = imm as a u32 (zero-extended, where [`Asm::mov_imm`] sign-extends).
    pub fn mov32_imm(&mut self, dst: Reg, imm: u32) -> &mut Asm {
        self.push(ins(ALU_K | OP_MOV, dst, 0, 0, imm as i32))
    }

    pub fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_ADD, dst, 0, 0, imm))
    }

    /// dst += src
    pub fn add(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_ADD, dst, src, 0, 0))
    }

    pub fn and_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_AND, dst, 0, 0, imm))
    }

    /// dst &= src
    pub fn and(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_AND, dst, src, 0, 0))
    }

    pub fn or_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_OR, dst, 0, 0, imm))
    }

    /// dst /= src (unsigned; the kernel gives 0 when src is 0)
    pub fn div(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_DIV, dst, src, 0, 0))
    }

    /// dst %= src (unsigned; the kernel leaves dst as it is when src is 0)
    pub fn rem(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.push(ins(ALU64_X | OP_MOD, dst, src, 0, 0))
    }

    /// dst <<= bits
    pub fn lsh_imm(&mut self, dst: Reg, bits: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_LSH, dst, 0, 0, bits))
    }

    /// dst >>= bits (logical)
    pub fn rsh_imm(&mut self, dst: Reg, bits: i32) -> &mut Asm {
        self.push(ins(ALU64_K | OP_RSH, dst, 0, 0, bits))
    }

    /// dst = *(size *)(src + off)
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.push(ins(LDX_MEM | size as u8, dst, src, off, 0))
    }

    /// *(size *)(dst + off) = imm
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.push(ins(ST_MEM | size as u8, dst, 0, off, imm))
    }

    /// *(size *)(dst + off) = src
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(ins(STX_MEM | size as u8, dst, src, off, 0))
    }

    /// src = atomically { old = *(size *)(dst + off); *(dst + off) += src; old }
    /// (W or DW only).
    pub fn fetch_add(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(ins(STX_ATOMIC | size as u8, dst, src, off, ATOMIC_FETCH_ADD))
    }

    /// dst = the map `map` (a descriptor the loader turns into the map).
    pub fn load_map(&mut self, dst: Reg, map: &Map) -> &mut Asm {
        self.push(ins(LD_IMM64, dst, PSEUDO_MAP_FD, 0, map.raw()));
        self.push(ins(0, 0, 0, 0, 0))
    }

    pub fn call(&mut self, helper: i32) -> &mut Asm {
        self.push(ins(CALL, 0, 0, 0, helper))
    }

    /// Returns r0.
    pub fn exit(&mut self) -> &mut Asm {
        self.push(ins(EXIT, 0, 0, 0, 0))
    }

    /// Returns `imm`.
    pub fn ret(&mut self, imm: i32) -> &mut Asm {
        self.mov_imm(R0, imm).exit()
    }

    /// A new label, to be placed with [`Asm::here`].
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Puts `label` at the next instruction.
    pub fn here(&mut self, label: Label) -> &mut Asm {
        assert!(self.labels[label.0].is_none(), "label {} placed twice", label.0);
        self.labels[label.0] = Some(self.prog.len());
        self
    }

    fn jump(&mut self, code: u8, dst: Reg, src: Reg, imm: i32, to: impl Into<Target>) -> &mut Asm {
        self.jumps.push((self.prog.len(), to.into()));
        self.push(ins(code, dst, src, 0, imm))
    }

    /// if dst == imm: go to `to`
    pub fn if_eq(&mut self, dst: Reg, imm: i32, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_K | OP_JEQ, dst, 0, imm, to)
    }

    /// if dst != imm: go to `to`
    pub fn if_ne(&mut self, dst: Reg, imm: i32, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_K | OP_JNE, dst, 0, imm, to)
    }

    /// if dst > src (unsigned): go to `to`
    pub fn if_gt_reg(&mut self, dst: Reg, src: Reg, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_X | OP_JGT, dst, src, 0, to)
    }

    /// if dst != src: go to `to`
    pub fn if_ne_reg(&mut self, dst: Reg, src: Reg, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_X | OP_JNE, dst, src, 0, to)
    }

    /// if dst == imm: skip the next `n` instructions.
    pub fn skip_if_eq(&mut self, dst: Reg, imm: i32, n: i16) -> &mut Asm {
        self.push(ins(JMP_K | OP_JEQ, dst, 0, n, imm))
    }

    pub fn goto(&mut self, to: impl Into<Target>) -> &mut Asm {
        self.jump(JMP_K | OP_JA, 0, 0, 0, to)
    }

    /// The program: what was built, then the verdicts jumped to (`Deny`, r0 = 0, before
    /// `Allow`, r0 = 1; the verifier refuses code no path reaches), with every jump
    /// resolved. Panics on a jump to a label never placed or placed before the jump (a
    /// loop): both are mistakes in the program's source.
    pub fn finish(&mut self) -> Vec<Insn> {
        let at_verdict = |a: &mut Asm, v: Verdict, r0: i32| {
            let used = a.jumps.iter().any(|&(_, to)| to == Target::Verdict(v));
            used.then(|| {
                let at = a.prog.len();
                a.ret(r0);
                at
            })
        };
        let deny = at_verdict(self, Verdict::Deny, 0);
        let allow = at_verdict(self, Verdict::Allow, 1);
        for &(at, to) in &self.jumps {
            let target = match to {
                Target::Verdict(Verdict::Deny) => deny,
                Target::Verdict(Verdict::Allow) => allow,
                Target::Label(l) => self.labels[l.0],
            }
            .unwrap_or_else(|| panic!("the jump at {at} goes to a label never placed"));
            assert!(target > at, "the jump at {at} goes back to {target}: programs are loop-free");
            self.prog[at].off = i16::try_from(target - at - 1).expect("a jump within 32k instructions");
        }
        self.jumps.clear();
        self.labels.clear();
        std::mem::take(&mut self.prog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::FN_SET_RETVAL;

    #[test]
    fn jumps_land_on_their_verdicts() {
        let mut a = Asm::default();
        a.mov(R6, R1).if_eq(R6, 0, Verdict::Allow).if_ne(R6, 5, Verdict::Deny).goto(Verdict::Allow);
        let p = a.finish();
        assert_eq!(p.len(), 8);
        // deny at 4 (r0 = 0), allow at 6 (r0 = 1)
        assert_eq!((p[4].code, p[4].imm, p[6].imm), (ALU64_K | OP_MOV, 0, 1));
        assert_eq!(1 + 1 + p[1].off as usize, 6);
        assert_eq!(2 + 1 + p[2].off as usize, 4);
        assert_eq!(3 + 1 + p[3].off as usize, 6);
        assert_eq!(p[0].regs, (R1 << 4) | R6);
    }

    /// The instruction words as the kernel's headers spell them
    /// (include/uapi/linux/bpf.h, bpf_common.h), and as `llvm-objdump -d` of clang's
    /// output shows them.
    #[test]
    fn encodings_match_the_kernels_instruction_format() {
        let mut a = Asm::default();
        a.fetch_add(Size::W, R9, 4, R1) // lock *(u32 *)(r9 + 4) += r1, fetching: c3 19 04 00 01 00 00 00
            .fetch_add(Size::DW, R2, -8, R3) // db 32 f8 ff 01 00 00 00
            .rem(R1, R2) // r1 %= r2: 9f 21
            .and(R3, R4) // 5f 43
            .add(R9, R1) // 0f 19
            .or_imm(R1, 1) // 47 01 .. 01 00 00 00
            .mov32_imm(R1, 0xffff_0000) // w1 = 0xffff0000: b4 01 00 00 00 00 ff ff
            .load(Size::H, R2, R6, 24) // r2 = *(u16 *)(r6 + 24): 69 62 18 00
            .load(Size::B, R2, R6, 10) // 71 62 0a 00
            .store(Size::H, R10, -6, R2) // *(u16 *)(r10 - 6) = r2: 6b 2a fa ff
            .store(Size::W, R6, 4, R1) // 63 16 04 00
            .store_imm(Size::B, R10, -5, 6) // 72 0a fb ff 06 00 00 00
            .call(FN_SET_RETVAL) // 85 00 00 00 bb 00 00 00
            .exit(); // 95
        let p = a.finish();
        let bytes = |i: &Insn| {
            let mut b = vec![i.code, i.regs];
            b.extend_from_slice(&i.off.to_le_bytes());
            b.extend_from_slice(&i.imm.to_le_bytes());
            b
        };
        let want: [[u8; 8]; 14] = [
            [0xc3, 0x19, 0x04, 0x00, 0x01, 0, 0, 0],
            [0xdb, 0x32, 0xf8, 0xff, 0x01, 0, 0, 0],
            [0x9f, 0x21, 0, 0, 0, 0, 0, 0],
            [0x5f, 0x43, 0, 0, 0, 0, 0, 0],
            [0x0f, 0x19, 0, 0, 0, 0, 0, 0],
            [0x47, 0x01, 0, 0, 0x01, 0, 0, 0],
            [0xb4, 0x01, 0, 0, 0, 0, 0xff, 0xff],
            [0x69, 0x62, 0x18, 0x00, 0, 0, 0, 0],
            [0x71, 0x62, 0x0a, 0x00, 0, 0, 0, 0],
            [0x6b, 0x2a, 0xfa, 0xff, 0, 0, 0, 0],
            [0x63, 0x16, 0x04, 0x00, 0, 0, 0, 0],
            [0x72, 0x0a, 0xfb, 0xff, 0x06, 0, 0, 0],
            [0x85, 0x00, 0, 0, 0xbb, 0, 0, 0],
            [0x95, 0x00, 0, 0, 0, 0, 0, 0],
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(bytes(&p[i]), w.to_vec(), "instruction {i}");
        }
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn labels_resolve_forward_and_only_used_verdicts_are_emitted() {
        let mut a = Asm::default();
        let (skip, out) = (a.label(), a.label());
        a.if_eq(R1, 0, skip) // 0
            .mov_imm(R2, 1) // 1
            .if_ne_reg(R1, R2, out) // 2
            .here(skip)
            .mov_imm(R2, 2) // 3
            .goto(Verdict::Deny) // 4
            .here(out)
            .ret(7); // 5, 6
        let p = a.finish();
        assert_eq!(p[0].off, 2); // to 3
        assert_eq!(p[2].off, 2); // to 5
        assert_eq!(p[4].off, 2); // to deny at 7
        assert_eq!((p[5].imm, p[6].code), (7, EXIT));
        // Allow is never jumped to: only deny follows.
        assert_eq!((p[7].imm, p[8].code, p.len()), (0, EXIT, 9));
    }

    #[test]
    #[should_panic(expected = "loop-free")]
    fn a_backward_jump_is_refused() {
        let mut a = Asm::default();
        let top = a.label();
        a.here(top).mov_imm(R0, 0).goto(top);
        a.finish();
    }

    #[test]
    #[should_panic(expected = "never placed")]
    fn a_jump_to_a_label_never_placed_is_refused() {
        let mut a = Asm::default();
        let nowhere = a.label();
        a.goto(nowhere);
        a.finish();
    }
}
