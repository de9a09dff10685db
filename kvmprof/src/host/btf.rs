//! Kernel BTF, vmlinux and modules: which functions and tracepoints fentry/fexit and tp_btf
//! programs can target, with the type id and the BTF object the kernel needs to load them.
//!
//! Functions and tracepoints of a module (`kvm`, `kvm_amd`, `kvm_intel` on distro kernels)
//! are described by the module's *split* BTF (`/sys/kernel/btf/<module>`): its type ids
//! continue after vmlinux's and its string offsets continue after vmlinux's strings. aya 0.14
//! parses only standalone BTF, so this small parser reads both; it keeps only what lookups by
//! name need. Loading against a module also needs an fd of the module's BTF object, found by
//! walking the kernel's BTF object ids (`open_object`).
use std::{
    collections::HashMap,
    fs,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
    sync::Arc,
};

use anyhow::{bail, ensure, Context, Result};

use crate::data::model::Vendor;

pub const SYSFS_BTF: &str = "/sys/kernel/btf";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
pub const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// One BTF type, with its members (struct/union) or parameters (func proto).
#[derive(Clone, Debug)]
struct Type {
    kind: u8,
    kind_flag: bool,
    name_off: u32,
    /// Size (int, struct, ...) or referenced type id (ptr, typedef, func, ...).
    size_type: u32,
    /// `(name_off, type, offset)`: member bit offset (bitfield-encoded when `kind_flag`), or
    /// 0 for parameters.
    items: Vec<(u32, u32, u32)>,
}

/// Parsed BTF: vmlinux, or a module's split BTF on top of it.
#[derive(Debug)]
pub struct Btf {
    base: Option<Arc<Btf>>,
    /// Id of `types[0]`: 1 for vmlinux, vmlinux's last id + 1 for split BTF.
    first_id: u32,
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Own type ids by name, for lookups by name.
    by_name: HashMap<String, Vec<u32>>,
}

impl Btf {
    pub fn parse(data: &[u8], base: Option<Arc<Btf>>) -> Result<Btf> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2).context("BTF truncated")?.try_into()?,
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4).context("BTF truncated")?.try_into()?,
            ))
        };
        ensure!(u16_at(0)? == MAGIC, "not little-endian BTF (bad magic)");
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_at = hdr_len + type_off;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF string section out of bounds")?
            .to_vec();
        let first_id = base.as_ref().map_or(1, |b| b.next_id());
        let mut types = Vec::new();
        let mut o = types_at;
        while o < types_at + type_len {
            let (name_off, info, size_type) = (u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?);
            o += 12;
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as usize;
            let mut items = Vec::new();
            // Bytes after the 12-byte header, by kind (include/uapi/linux/btf.h).
            let extra = match kind {
                KIND_INT | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,                 // array
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        items.push((u32_at(m)?, u32_at(m + 4)?, u32_at(m + 8)?));
                    }
                    vlen * 12
                }
                KIND_ENUM => vlen * 8,
                KIND_FUNC_PROTO => {
                    for i in 0..vlen {
                        let p = o + i * 8;
                        items.push((u32_at(p)?, u32_at(p + 4)?, 0));
                    }
                    vlen * 8
                }
                15 | KIND_ENUM64 => vlen * 12, // datasec, enum64
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | 16 | KIND_TYPE_TAG => 0,
                k => bail!(
                    "unknown BTF kind {k} at type {}",
                    first_id as usize + types.len()
                ),
            };
            o += extra;
            types.push(Type {
                kind,
                kind_flag: info & (1 << 31) != 0,
                name_off,
                size_type,
                items,
            });
        }
        let mut btf = Btf {
            base,
            first_id,
            types,
            strings,
            by_name: HashMap::new(),
        };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, t) in btf.types.iter().enumerate() {
            if t.name_off != 0 {
                by_name
                    .entry(btf.name(t.name_off).to_string())
                    .or_default()
                    .push(btf.first_id + i as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    /// vmlinux BTF, or a module's BTF split on `base`.
    pub fn read(path: &Path, base: Option<Arc<Btf>>) -> Result<Btf> {
        let data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        Btf::parse(&data, base).with_context(|| format!("parse {}", path.display()))
    }

    fn next_id(&self) -> u32 {
        self.first_id + self.types.len() as u32
    }

    fn base_str_len(&self) -> usize {
        self.base
            .as_ref()
            .map_or(0, |b| b.base_str_len() + b.strings.len())
    }

    fn name(&self, off: u32) -> &str {
        let off = off as usize;
        let base_len = self.base_str_len();
        let (bytes, at) = match &self.base {
            Some(b) if off < base_len => return b.name(off as u32),
            _ => (&self.strings, off - base_len),
        };
        let s = bytes.get(at..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or_default()
    }

    fn get(&self, id: u32) -> Option<&Type> {
        if id < self.first_id {
            return self.base.as_ref()?.get(id);
        }
        self.types.get((id - self.first_id) as usize)
    }

    /// The id of a type of `kind` named `name` defined in this BTF itself (a module's own
    /// functions and tracepoints, not vmlinux's).
    pub fn find(&self, name: &str, kind: u8) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .copied()
            .find(|&id| self.get(id).is_some_and(|t| t.kind == kind))
    }

    /// Byte offset of `member` in `struct name` (a complete definition, here or in the base).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let own = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .find_map(|&id| {
                let t = self.get(id)?;
                if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || t.items.is_empty() {
                    return None;
                }
                let (_, _, off) = t.items.iter().find(|(n, _, _)| self.name(*n) == member)?;
                let bits = if t.kind_flag { off & 0xff_ffff } else { *off };
                Some(bits / 8)
            });
        own.or_else(|| self.base.as_ref()?.member_offset(name, member))
    }

    /// A readable name of a parameter type, qualifiers and typedefs kept as written
    /// (`struct kvm_vcpu *`, `u32`), to check a tracepoint's prototype.
    fn type_name(&self, id: u32) -> String {
        let Some(t) = self.get(id) else {
            return if id == 0 { "void".into() } else { "?".into() };
        };
        match t.kind {
            KIND_PTR => format!("{} *", self.type_name(t.size_type)),
            KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                self.type_name(t.size_type)
            }
            KIND_STRUCT => format!("struct {}", self.name(t.name_off)),
            KIND_UNION => format!("union {}", self.name(t.name_off)),
            _ => self.name(t.name_off).to_string(),
        }
    }

    /// The parameter type ids of tracepoint `name` as BTF and raw tracepoint programs see
    /// them: the prototype of `btf_trace_<name>` without its leading `void *__data`.
    fn tracepoint_params(&self, name: &str) -> Option<Vec<u32>> {
        let td = self.get(self.find(&format!("btf_trace_{name}"), KIND_TYPEDEF)?)?;
        let ptr = self.get(td.size_type).filter(|t| t.kind == KIND_PTR)?;
        let proto = self
            .get(ptr.size_type)
            .filter(|t| t.kind == KIND_FUNC_PROTO)?;
        Some(proto.items.iter().skip(1).map(|&(_, ty, _)| ty).collect())
    }

    /// The arguments of tracepoint `name` by type name (`struct kvm_vcpu *`, `u32`).
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<String>> {
        let params = self.tracepoint_params(name)?;
        Some(params.into_iter().map(|ty| self.type_name(ty)).collect())
    }

    /// The arguments of tracepoint `name` by shape, as a raw tracepoint program reading them
    /// by position cares (bcc's kvmexit broke when `kvm_exit`'s arguments changed, bcc #4654).
    pub fn tracepoint_arg_shapes(&self, name: &str) -> Option<Vec<Arg>> {
        let params = self.tracepoint_params(name)?;
        Some(params.into_iter().map(|ty| self.shape(ty)).collect())
    }

    fn shape(&self, mut id: u32) -> Arg {
        // Bounded: type chains are short; a malformed loop must not hang.
        for _ in 0..32 {
            let Some(t) = self.get(id) else {
                return Arg::Other;
            };
            match t.kind {
                KIND_INT | KIND_ENUM | KIND_ENUM64 => return Arg::Int(t.size_type),
                KIND_PTR => return Arg::Ptr,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_type
                }
                _ => return Arg::Other,
            }
        }
        Arg::Other
    }
}

/// One tracepoint argument's shape as far as a raw tracepoint program cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// An integer (or enum) of this many bytes (sign does not change how its bits are read).
    Int(u32),
    Ptr,
    /// Anything else (struct by value, ...).
    Other,
}

/// Where a BTF function or tracepoint lives, as the kernel needs it at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The module whose BTF object holds the type; `None` for vmlinux.
    pub module: Option<String>,
    pub type_id: u32,
}

/// vmlinux BTF and the split BTF of the KVM modules that are loaded.
pub struct KernelBtf {
    pub vmlinux: Arc<Btf>,
    /// `(module, its BTF)`, in the order asked for.
    pub modules: Vec<(String, Btf)>,
}

impl KernelBtf {
    /// Reads vmlinux BTF from `dir` and the BTF of each of `modules` that has one there.
    pub fn read(dir: &Path, modules: &[&str]) -> Result<KernelBtf> {
        let vmlinux = Arc::new(Btf::read(&dir.join("vmlinux"), None)?);
        let mut out = Vec::new();
        for m in modules {
            let path = dir.join(m);
            if path.exists() {
                out.push((m.to_string(), Btf::read(&path, Some(vmlinux.clone()))?));
            }
        }
        Ok(KernelBtf {
            vmlinux,
            modules: out,
        })
    }

    /// The BTF (vmlinux first, then each module) defining a type of `kind` named `name`.
    pub fn locate(&self, name: &str, kind: u8) -> Option<(Target, &Btf)> {
        if let Some(type_id) = self.vmlinux.find(name, kind) {
            return Some((
                Target {
                    module: None,
                    type_id,
                },
                &self.vmlinux,
            ));
        }
        self.modules.iter().find_map(|(m, b)| {
            Some((
                Target {
                    module: Some(m.clone()),
                    type_id: b.find(name, kind)?,
                },
                b,
            ))
        })
    }

    pub fn function(&self, name: &str) -> Option<Target> {
        self.locate(name, KIND_FUNC).map(|(t, _)| t)
    }

    /// A tracepoint's `btf_trace_<name>` typedef, and the BTF it lives in.
    pub fn tracepoint(&self, name: &str) -> Option<(Target, &Btf)> {
        self.locate(&format!("btf_trace_{name}"), KIND_TYPEDEF)
    }
}

/// Where the `kvm:kvm_exit` values live for a BTF tracepoint program, which gets the raw
/// arguments `(struct kvm_vcpu *vcpu, u32 isa)` instead of the classic tracepoint's fields:
/// `exit_reason` is read through the vendor's vCPU struct, which embeds `kvm_vcpu` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitLayout {
    /// Offset of a pointer in the vendor vCPU struct to follow first (SVM: `vcpu_svm.vmcb`).
    pub reason_deref: Option<u32>,
    /// Offset of the 32-bit exit reason (after the deref, if any).
    pub reason_off: u32,
    /// Offset of `kvm_vcpu.vcpu_id`.
    pub vcpu_id_off: u32,
}

/// Modules whose BTF may hold KVM functions and tracepoints.
pub const KVM_BTF_MODULES: &[&str] = &["kvm", "kvm_amd", "kvm_intel"];

/// Where `tp_btf/kvm_exit` finds the exit reason and vCPU id on `vendor`'s kernel, from the
/// BTF of the vendor's vCPU struct; `Err` says why tp_btf cannot replace the classic
/// tracepoint. The prototype is checked, not assumed: it changed across kernels (older ones
/// passed the exit reason as the first argument).
pub fn kvm_exit_layout(k: &KernelBtf, vendor: Vendor) -> Result<ExitLayout, String> {
    let (_, tp_btf) = k
        .tracepoint("kvm_exit")
        .ok_or("no btf_trace_kvm_exit type in vmlinux or KVM module BTF")?;
    let args = tp_btf.tracepoint_args("kvm_exit").unwrap_or_default();
    if args != ["struct kvm_vcpu *", "u32"] {
        return Err(format!(
            "btf_trace_kvm_exit is ({}), not the (struct kvm_vcpu *, u32) this program reads",
            args.join(", ")
        ));
    }
    // The vendor struct (from the vendor module's BTF, or vmlinux when built in), the pointer
    // in it to follow, and the members whose offsets add up to the exit reason after it.
    type Member = (&'static str, &'static str);
    let (strct, deref, reason): (&str, Option<Member>, &[Member]) = match vendor {
        Vendor::Svm => (
            "vcpu_svm",
            Some(("vcpu_svm", "vmcb")),
            &[("vmcb", "control"), ("vmcb_control_area", "exit_code")],
        ),
        Vendor::Vmx => ("vcpu_vmx", None, &[("vcpu_vmx", "exit_reason")]),
        _ => return Err(format!("no vCPU struct layout known for {vendor:?}")),
    };
    let btf = std::iter::once(&*k.vmlinux)
        .chain(k.modules.iter().map(|(_, b)| b))
        .find(|b| b.member_offset(strct, "vcpu").is_some())
        .ok_or_else(|| format!("struct {strct} not in BTF"))?;
    let off = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .ok_or_else(|| format!("{s}.{m} not in BTF"))
    };
    if off(strct, "vcpu")? != 0 {
        return Err(format!("kvm_vcpu is not the first member of {strct}"));
    }
    Ok(ExitLayout {
        reason_deref: deref.map(|(s, m)| off(s, m)).transpose()?,
        reason_off: reason
            .iter()
            .map(|(s, m)| off(s, m))
            .sum::<Result<u32, String>>()?,
        vcpu_id_off: off("kvm_vcpu", "vcpu_id")?,
    })
}

/// BTF offsets of `current->files->fdt->fd[fd]->private_data->run`: a vCPU fd's `kvm_run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunPath {
    pub files: u32,
    pub fdt: u32,
    pub fd_array: u32,
    pub private_data: u32,
    pub run: u32,
}

/// The BTF offsets from a task to the `kvm_run` of its vCPU fd (`kvm_vcpu` lives in vmlinux
/// or in the `kvm` module's BTF), or `None` when one is missing.
pub fn run_path(k: &KernelBtf) -> Option<RunPath> {
    let v = &k.vmlinux;
    let run = std::iter::once(&**v)
        .chain(k.modules.iter().map(|(_, b)| b))
        .find_map(|b| b.member_offset("kvm_vcpu", "run"))?;
    Some(RunPath {
        files: v.member_offset("task_struct", "files")?,
        fdt: v.member_offset("files_struct", "fdt")?,
        fd_array: v.member_offset("fdtable", "fd")?,
        private_data: v.member_offset("file", "private_data")?,
        run,
    })
}

/// An fd of the kernel BTF object of `module` (`None`: vmlinux, which needs no fd), found by
/// walking every BTF object id (BPF_BTF_GET_NEXT_ID) and reading its name (a module's BTF
/// object is named after the module). Needs CAP_SYS_ADMIN.
pub fn open_object(module: Option<&str>) -> Result<Option<OwnedFd>> {
    let Some(module) = module else {
        return Ok(None);
    };
    let mut id = 0u32;
    loop {
        id = match sys::next_btf_id(id) {
            Ok(next) => next,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                bail!("no BTF object named {module} among the kernel's BTF objects")
            }
            Err(e) => return Err(e).context("BPF_BTF_GET_NEXT_ID"),
        };
        // An object can go away between the two calls (a module unloaded): skip it.
        let Ok(fd) = sys::btf_fd_by_id(id) else {
            continue;
        };
        let (name, kernel) = sys::btf_name(&fd).context("BPF_OBJ_GET_INFO_BY_FD on BTF")?;
        if kernel && name == module {
            return Ok(Some(fd));
        }
    }
}

/// Whether the kernel (or its sandbox) lets a BPF trampoline attach to `target`: loads, and
/// drops at once, a two-instruction fentry program on it. This is the one fact about
/// fentry that no file tells; learning it this way loads nothing of kvmprof's own object.
pub fn probe_trampoline(target: &Target) -> Result<()> {
    use std::os::fd::AsRawFd;
    let obj = open_object(target.module.as_deref())?;
    let fd = sys::load_fentry_stub(target.type_id, obj.as_ref().map(|f| f.as_raw_fd()))
        .map_err(anyhow::Error::from)?;
    drop(fd);
    Ok(())
}

/// The `bpf(2)` commands `open_object` and `probe_trampoline` need, which aya does not
/// expose.
mod sys {
    use super::*;

    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
    const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;

    /// `union bpf_attr` for the *_GET_NEXT_ID / *_GET_FD_BY_ID commands.
    #[repr(C)]
    #[derive(Default)]
    struct IdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// `struct bpf_btf_info`.
    #[repr(C)]
    #[derive(Default)]
    struct BtfInfo {
        btf: u64,
        btf_size: u32,
        id: u32,
        name: u64,
        name_len: u32,
        kernel_btf: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
        // SAFETY: `attr` is a live, properly laid out bpf_attr prefix of the size passed.
        let r =
            unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r)
    }

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_TRACING: u32 = 26;
    const BPF_TRACE_FENTRY: u32 = 24;

    /// `union bpf_attr` for BPF_PROG_LOAD, up to `attach_btf_obj_fd`.
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
        prog_btf_fd: u32,
        func_info_rec_size: u32,
        func_info: u64,
        func_info_cnt: u32,
        line_info_rec_size: u32,
        line_info: u64,
        line_info_cnt: u32,
        attach_btf_id: u32,
        attach_btf_obj_fd: u32,
    }

    /// Loads `r0 = 0; exit` as an fentry program on BTF type `btf_id` (in the BTF object
    /// `obj_fd`, or vmlinux without one).
    pub fn load_fentry_stub(btf_id: u32, obj_fd: Option<i32>) -> std::io::Result<OwnedFd> {
        // BPF_MOV64_IMM(BPF_REG_0, 0); BPF_EXIT_INSN().
        let insns: [u64; 2] = [0xb7, 0x95];
        let license = b"GPL\0";
        let mut a = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_TRACING,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_TRACE_FENTRY,
            attach_btf_id: btf_id,
            attach_btf_obj_fd: obj_fd.unwrap_or(0) as u32,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut a)?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn next_btf_id(start: u32) -> std::io::Result<u32> {
        let mut a = IdAttr {
            id: start,
            ..Default::default()
        };
        bpf(BPF_BTF_GET_NEXT_ID, &mut a)?;
        Ok(a.next_id)
    }

    pub fn btf_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
        let mut a = IdAttr {
            id,
            ..Default::default()
        };
        let fd = bpf(BPF_BTF_GET_FD_BY_ID, &mut a)?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The object's name and whether it is kernel BTF (vmlinux or a module).
    pub fn btf_name(fd: &OwnedFd) -> std::io::Result<(String, bool)> {
        use std::os::fd::AsRawFd;
        let mut name = [0u8; 64];
        let mut info = BtfInfo {
            name: name.as_mut_ptr() as u64,
            name_len: name.len() as u32,
            ..Default::default()
        };
        let mut a = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<BtfInfo>() as u32,
            info: &mut info as *mut BtfInfo as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Ok((
            String::from_utf8_lossy(&name[..end]).into_owned(),
            info.kernel_btf != 0,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::KVM_BTF_MODULES as KVM_MODULES;
    use super::*;

    /// Builds BTF blobs type by type, the way pahole lays them out.
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        /// Length of the base's string section (split BTF continues its offsets).
        str_base: u32,
        pub next_id: u32,
    }

    impl Builder {
        pub fn new() -> Builder {
            Builder {
                types: vec![],
                strings: vec![0],
                str_base: 0,
                next_id: 1,
            }
        }

        /// A split BTF on top of `base`.
        pub fn split(base: &Builder) -> Builder {
            Builder {
                types: vec![],
                strings: vec![],
                str_base: base.str_base + base.strings.len() as u32,
                next_id: base.next_id,
            }
        }

        pub fn str(&mut self, s: &str) -> u32 {
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(
            &mut self,
            name_off: u32,
            kind: u8,
            vlen: u32,
            size_type: u32,
            extra: &[u32],
        ) -> u32 {
            for v in [name_off, (kind as u32) << 24 | vlen, size_type]
                .iter()
                .chain(extra)
            {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let n = self.str(name);
            self.push(n, KIND_INT, 0, size, &[size * 8])
        }

        pub fn typedef(&mut self, name: &str, ty: u32) -> u32 {
            let n = self.str(name);
            self.push(n, KIND_TYPEDEF, 0, ty, &[])
        }

        pub fn ptr(&mut self, ty: u32) -> u32 {
            self.push(0, KIND_PTR, 0, ty, &[])
        }

        /// `members`: `(name, type, byte offset)`.
        pub fn strct(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let n = self.str(name);
            let mut extra = vec![];
            for (m, ty, off) in members {
                extra.extend([self.str(m), *ty, off * 8]);
            }
            self.push(n, KIND_STRUCT, members.len() as u32, size, &extra)
        }

        pub fn proto(&mut self, ret: u32, params: &[u32]) -> u32 {
            let extra: Vec<u32> = params.iter().flat_map(|&p| [0, p]).collect();
            self.push(0, KIND_FUNC_PROTO, params.len() as u32, ret, &extra)
        }

        pub fn func(&mut self, name: &str, proto: u32) -> u32 {
            let n = self.str(name);
            self.push(n, KIND_FUNC, 0, proto, &[])
        }

        pub fn blob(&self) -> Vec<u8> {
            let mut b = vec![];
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&[1, 0]); // version, flags
            for v in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    /// A vmlinux with `u32` and `kvm_fast_pio`, and a `kvm_amd`-like module split on it with
    /// `svm_vcpu_run`, `struct vcpu_svm` and a `kvm_exit` tracepoint.
    pub fn kernel() -> KernelBtf {
        let mut v = Builder::new();
        let u32_ = v.int("unsigned int", 4);
        let u32_ = v.typedef("u32", u32_);
        let void_fn = v.proto(0, &[]);
        v.func("kvm_fast_pio", void_fn);
        let vcpu = v.strct("kvm_vcpu", 64, &[("cpu", u32_, 0), ("vcpu_id", u32_, 8)]);
        let vcpu_p = v.ptr(vcpu);
        let vmlinux = Arc::new(Btf::parse(&v.blob(), None).unwrap());

        let mut m = Builder::split(&v);
        let p = m.proto(0, &[vcpu_p]);
        m.func("svm_vcpu_run", p);
        let ctrl = m.strct("vmcb_control_area", 256, &[("exit_code", u32_, 0x70)]);
        let vmcb = m.strct("vmcb", 1024, &[("control", ctrl, 0)]);
        let vmcb_p = m.ptr(vmcb);
        m.strct(
            "vcpu_svm",
            4096,
            &[("vcpu", vcpu, 0), ("vmcb", vmcb_p, 0x1a0)],
        );
        let data = m.ptr(0);
        let tp = m.proto(0, &[data, vcpu_p, u32_]);
        let tp_p = m.ptr(tp);
        m.typedef("btf_trace_kvm_exit", tp_p);
        let module = Btf::parse(&m.blob(), Some(vmlinux.clone())).unwrap();
        KernelBtf {
            vmlinux,
            modules: vec![("kvm_amd".into(), module)],
        }
    }

    #[test]
    fn functions_resolve_in_vmlinux_or_in_the_module_split_btf_with_continued_ids() {
        let k = kernel();
        let fast = k.function("kvm_fast_pio").unwrap();
        assert_eq!(fast.module, None);
        let run = k.function("svm_vcpu_run").unwrap();
        assert_eq!(run.module.as_deref(), Some("kvm_amd"));
        // Split ids continue after vmlinux's 6 types: proto 7, func 8.
        assert_eq!(run.type_id, 8);
        assert!(k.function("vmx_vcpu_run").is_none());
    }

    #[test]
    fn a_module_tracepoint_prototype_reads_across_the_split() {
        let k = kernel();
        let (t, btf) = k.tracepoint("kvm_exit").unwrap();
        assert_eq!(t.module.as_deref(), Some("kvm_amd"));
        assert_eq!(
            btf.tracepoint_args("kvm_exit").unwrap(),
            ["struct kvm_vcpu *", "u32"]
        );
        assert!(k.tracepoint("kvm_pio").is_none());
        assert_eq!(
            btf.tracepoint_arg_shapes("kvm_exit").unwrap(),
            [Arg::Ptr, Arg::Int(4)]
        );
    }

    #[test]
    fn member_offsets_come_from_the_module_or_its_base() {
        let (_, btf) = &kernel().modules[0];
        assert_eq!(btf.member_offset("vcpu_svm", "vmcb"), Some(0x1a0));
        assert_eq!(
            btf.member_offset("vmcb_control_area", "exit_code"),
            Some(0x70)
        );
        assert_eq!(btf.member_offset("kvm_vcpu", "vcpu_id"), Some(8));
        assert_eq!(btf.member_offset("kvm_vcpu", "nope"), None);
    }

    #[test]
    fn the_svm_exit_reason_is_found_through_the_vmcb_pointer() {
        let l = kvm_exit_layout(&kernel(), Vendor::Svm).unwrap();
        assert_eq!(
            l,
            ExitLayout {
                reason_deref: Some(0x1a0),
                reason_off: 0x70,
                vcpu_id_off: 8
            }
        );
        let e = kvm_exit_layout(&kernel(), Vendor::Vmx).unwrap_err();
        assert!(e.contains("vcpu_vmx not in BTF"), "{e}");
    }

    /// The running kernel's own BTF parses, every kind included, and its tracepoint
    /// prototypes read as the kernel declares them.
    #[test]
    fn the_running_kernels_btf_parses() {
        let dir = Path::new(SYSFS_BTF);
        if !dir.join("vmlinux").exists() {
            eprintln!("skipped the_running_kernels_btf_parses: no {SYSFS_BTF}/vmlinux");
            return;
        }
        let k = KernelBtf::read(dir, KVM_MODULES).unwrap();
        assert!(k.function("schedule").is_some_and(|t| t.module.is_none()));
        let (_, btf) = k.tracepoint("sched_switch").unwrap();
        let args = btf.tracepoint_args("sched_switch").unwrap();
        assert!(
            args.contains(&"struct task_struct *".to_string()),
            "{args:?}"
        );
    }

    /// Where the running kernel has KVM's tracepoints in BTF, `kvm_pio` starts with the three
    /// 4-byte integers `raw_kvm_pio` reads.
    #[test]
    fn the_running_kernels_kvm_pio_prototype_is_found_when_it_has_btf() {
        let Ok(k) = KernelBtf::read(Path::new(SYSFS_BTF), KVM_MODULES) else {
            eprintln!("skipped: no readable {SYSFS_BTF}/vmlinux");
            return;
        };
        match k.tracepoint("kvm_pio") {
            Some((_, btf)) => {
                let args = btf.tracepoint_arg_shapes("kvm_pio").unwrap();
                assert_eq!(&args[..3], &[Arg::Int(4); 3]);
            }
            None => eprintln!("skipped: this kernel has no btf_trace_kvm_pio"),
        }
    }

    /// The real kernel: walks its BTF objects (root needed; vmlinux's object is named
    /// `vmlinux`, as a module's is named after the module).
    #[test]
    fn kernel_btf_objects_are_found_by_name() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped kernel_btf_objects_are_found_by_name: needs root");
            return;
        }
        assert!(open_object(Some("vmlinux")).unwrap().is_some());
        assert!(open_object(None).unwrap().is_none());
        let e = open_object(Some("no_such_module")).unwrap_err().to_string();
        assert_eq!(
            e,
            "no BTF object named no_such_module among the kernel's BTF objects"
        );
    }

    #[test]
    fn garbage_is_refused_not_misread() {
        assert!(Btf::parse(b"not btf at all, clearly", None).is_err());
        let mut blob = kernel_blob_truncated();
        blob.truncate(30);
        assert!(Btf::parse(&blob, None).is_err());
    }

    fn kernel_blob_truncated() -> Vec<u8> {
        let mut v = Builder::new();
        v.int("int", 4);
        v.blob()
    }
}
