//! The argument types of a raw tracepoint, from the running kernel's BTF: the prototype
//! of `btf_trace_<tracepoint>` (`void (*)(void *__data, <TP_PROTO args>)`). Raw tracepoint
//! programs read arguments by position, so they are used only where the prototype is the
//! one they were written for; bcc's kvmexit broke when `kvm_exit`'s arguments changed
//! (bcc #4654). aya's BTF types keep prototypes private, hence this small reader.
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One argument's type as far as a raw tracepoint program cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// An integer of this many bytes (sign does not change how its bits are read).
    Int(u32),
    Ptr,
    /// Anything else (struct by value, enum, ...).
    Other,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Size (INT, ENUM, STRUCT...) or referenced type id (PTR, TYPEDEF, ...).
    size_or_type: u32,
    /// FUNC_PROTO parameter type ids.
    params: Vec<u32>,
}

/// Types of one BTF blob; a module's BTF continues the ids and strings of vmlinux's.
#[derive(Default)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// vmlinux's BTF plus, when `module` is given and has BTF, that module's.
    pub fn load(module: Option<&str>) -> Result<Btf> {
        let dir = Path::new("/sys/kernel/btf");
        let mut btf = Btf::default();
        btf.add(&std::fs::read(dir.join("vmlinux")).context("read /sys/kernel/btf/vmlinux")?)?;
        if let Some(m) = module {
            if let Ok(data) = std::fs::read(dir.join(m)) {
                btf.add(&data)?;
            }
        }
        Ok(btf)
    }

    /// Appends a blob (split BTF continues the ids and string offsets of what is loaded).
    pub fn add(&mut self, data: &[u8]) -> Result<()> {
        let u32_at = |off: usize| -> Result<u32> {
            let b = data.get(off..off + 4).context("BTF truncated")?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = hdr_len + type_off;
        let strs = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF strings truncated")?;
        let mut off = types_start;
        let end = types_start + type_len;
        while off < end {
            let name_off = u32_at(off)?;
            let info = u32_at(off + 4)?;
            let size_or_type = u32_at(off + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            off += 12;
            let mut params = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM => 8 * vlen,
                KIND_FUNC_PROTO => {
                    for i in 0..vlen {
                        params.push(u32_at(off + 8 * i + 4)?);
                    }
                    8 * vlen
                }
                _ => 0,
            };
            off += extra;
            self.types.push(Type {
                name_off,
                kind,
                size_or_type,
                params,
            });
        }
        self.strings.extend_from_slice(strs);
        Ok(())
    }

    /// Type by id (id 0 is void and never stored).
    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    fn name(&self, t: &Type) -> &[u8] {
        let s = self.strings.get(t.name_off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// The arguments of tracepoint `name` (without the leading `void *__data`), or `None`
    /// when this kernel has no `btf_trace_<name>`.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<Arg>> {
        let want = format!("btf_trace_{name}");
        let typedef = self
            .types
            .iter()
            .find(|t| t.kind == KIND_TYPEDEF && self.name(t) == want.as_bytes())?;
        let ptr = self.get(typedef.size_or_type)?;
        let proto = self
            .get(ptr.size_or_type)
            .filter(|p| p.kind == KIND_FUNC_PROTO)?;
        Some(
            proto
                .params
                .iter()
                .skip(1)
                .map(|&id| self.arg(id))
                .collect(),
        )
    }

    fn arg(&self, mut id: u32) -> Arg {
        // Bounded: type chains are short; a malformed loop must not hang.
        for _ in 0..32 {
            let Some(t) = self.get(id) else {
                return Arg::Other;
            };
            match t.kind {
                KIND_INT | KIND_ENUM => return Arg::Int(t.size_or_type),
                KIND_PTR => return Arg::Ptr,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Arg::Other,
            }
        }
        Arg::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BTF with: 1 `unsigned int`, 2 `void *`, 3 `const void`(→0)... built by hand.
    fn blob() -> Vec<u8> {
        let strings = b"\0unsigned int\0btf_trace_kvm_pio\0u32\0".to_vec();
        let mut types: Vec<u32> = Vec::new();
        // 1: INT "unsigned int" size 4 (+ encoding word).
        types.extend([1, KIND_INT << 24, 4, 32]);
        // 2: PTR to void.
        types.extend([0, KIND_PTR << 24, 0]);
        // 3: TYPEDEF u32 -> 1.
        types.extend([33, KIND_TYPEDEF << 24, 1]);
        // 4: CONST -> 3.
        types.extend([0, KIND_CONST << 24, 3]);
        // 5: FUNC_PROTO void (void *, u32, const u32, void *).
        types.extend([0, KIND_FUNC_PROTO << 24 | 4, 0, 0, 2, 0, 3, 0, 4, 0, 2]);
        // 6: PTR -> 5; 7: TYPEDEF btf_trace_kvm_pio -> 6.
        types.extend([0, KIND_PTR << 24, 5]);
        types.extend([14, KIND_TYPEDEF << 24, 6]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(0xeb9fu16.to_le_bytes());
        out.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(w.to_le_bytes());
        }
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    #[test]
    fn a_tracepoint_prototype_is_read_through_typedefs_and_qualifiers() {
        let mut btf = Btf::default();
        btf.add(&blob()).unwrap();
        assert_eq!(
            btf.tracepoint_args("kvm_pio"),
            Some(vec![Arg::Int(4), Arg::Int(4), Arg::Ptr])
        );
        assert_eq!(btf.tracepoint_args("kvm_mmio"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut btf = Btf::default();
        assert!(btf.add(b"nope").is_err());
        let mut cut = blob();
        cut.truncate(40);
        assert!(Btf::default().add(&cut).is_err());
    }

    #[test]
    fn the_running_kernels_kvm_pio_prototype_is_found_when_it_has_btf() {
        let Ok(btf) = Btf::load(Some("kvm")) else {
            eprintln!("skipped: no readable /sys/kernel/btf/vmlinux");
            return;
        };
        match btf.tracepoint_args("kvm_pio") {
            Some(args) => assert_eq!(&args[..3], &[Arg::Int(4); 3]),
            None => eprintln!("skipped: this kernel has no btf_trace_kvm_pio"),
        }
    }
}
