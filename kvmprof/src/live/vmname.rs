//! Names a VM the way its operator does: the VMM's process name and, when its command line
//! says, the guest's name (QEMU's `-name`, which is also how libvirt passes its domain name:
//! `-name guest=DOMAIN,debug-threads=on`).
use std::fs;

use crate::live::target;

/// What a person recognises a VM by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmName {
    /// `/proc/PID/comm`.
    pub process: String,
    /// The guest name from the command line, empty when there is none.
    pub guest: String,
}

/// The names of process `pid`, read from /proc; empty strings when it has already gone.
pub fn of_pid(pid: u32) -> VmName {
    let args = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = args
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    VmName {
        process: target::process_name(pid).unwrap_or_default(),
        guest: guest_name(&args).unwrap_or_default(),
    }
}

/// The guest name of a QEMU command line: `-name X`, `-name guest=X,...`, `--name X` or
/// `-name=X`. QEMU option values escape a literal comma as `,,`.
pub fn guest_name(args: &[String]) -> Option<String> {
    let value = args.iter().enumerate().find_map(|(i, a)| {
        let flag = a.strip_prefix("--").or_else(|| a.strip_prefix('-'))?;
        if flag == "name" {
            args.get(i + 1).map(String::as_str)
        } else {
            flag.strip_prefix("name=")
        }
    })?;
    let name = option_list(value)
        .into_iter()
        .find_map(|opt| match opt.split_once('=') {
            Some(("guest", v)) => Some(v.to_string()),
            // The first element without a key is QEMU's implied `guest=`.
            None => Some(opt),
            Some(_) => None,
        })?;
    (!name.is_empty()).then_some(name)
}

/// Splits a QEMU option list at single commas; `,,` stands for a comma.
fn option_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            cur.push(c);
        } else if chars.next_if_eq(&',').is_some() {
            cur.push(',');
        } else {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(cmdline: &str) -> Option<String> {
        let args: Vec<String> = cmdline.split(' ').map(str::to_string).collect();
        guest_name(&args)
    }

    #[test]
    fn reads_qemu_and_libvirt_guest_names() {
        assert_eq!(
            name("qemu-system-x86_64 -m 1G -name web1"),
            Some("web1".into())
        );
        // libvirt's form.
        assert_eq!(
            name("/usr/bin/qemu-system-x86_64 -name guest=db-7,debug-threads=on -S"),
            Some("db-7".into())
        );
        assert_eq!(name("qemu --name=a,,b,process=x"), Some("a,b".into()));
        assert_eq!(name("qemu -name process=x,guest=g"), Some("g".into()));
    }

    #[test]
    fn no_guest_name_without_one() {
        assert_eq!(name("kvmprof-testvmm --vcpus 2"), None);
        assert_eq!(name("qemu -name"), None);
        assert_eq!(name("qemu -name process=x"), None);
        assert_eq!(name("qemu -name guest="), None);
    }

    #[test]
    fn names_this_process() {
        let me = of_pid(std::process::id());
        assert!(!me.process.is_empty());
        assert_eq!(me.guest, "");
        assert_eq!(of_pid(u32::MAX), VmName::default());
    }
}
