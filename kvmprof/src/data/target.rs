//! A process profiled, as the data file's header, the report and the live views name it;
//! `live::target` finds them.

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub pid: u32,
    pub name: String,
}

/// `1234 (qemu-system-x86), 1240 (qemu-system-x86)`, for messages.
pub fn list<'a>(targets: impl IntoIterator<Item = &'a Target>) -> String {
    let names: Vec<String> = targets
        .into_iter()
        .map(|t| format!("{} ({})", t.pid, t.name))
        .collect();
    names.join(", ")
}
