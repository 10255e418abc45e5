//! What a model's training needs of memory at least, and what this process may use: a warning
//! before the first batch where the one passes the other, instead of an allocation failure at
//! the first checkpoint an epoch later.

/// Bytes a parameter takes while training, at least: its weight, its gradient and AdamW's two
/// moments (f32 each).
const TRAINING_BYTES: u64 = 16;
/// Bytes a parameter takes in the latest checkpoint: its weight and AdamW's two moments.
const CHECKPOINT_BYTES: u64 = 12;
/// More per parameter with `train.ema_decay`: the average, held and checkpointed.
const AVERAGE_BYTES: u64 = 4;

/// The size of a model's latest checkpoint, in bytes.
pub fn checkpoint_bytes(params: usize, averaged: bool) -> u64 {
    params as u64 * (CHECKPOINT_BYTES + if averaged { AVERAGE_BYTES } else { 0 })
}

/// A warning where training `params` parameters needs more than `limits` allow: the weights,
/// gradients and optimizer state (and the average) held, plus the checkpoint's records while
/// it is written. `limits` are (bytes, what) pairs: totals for the whole process (an
/// address-space or cgroup limit), or, `available`, what the machine still has beyond the
/// `rss` the process holds now (the model is built by then). `None` where it fits.
pub fn shortfall(
    params: usize,
    averaged: bool,
    rss: u64,
    limits: &[(u64, &'static str)],
    available: Option<u64>,
) -> Option<String> {
    let held = params as u64 * (TRAINING_BYTES + if averaged { AVERAGE_BYTES } else { 0 });
    let needed = held + checkpoint_bytes(params, averaged);
    let room = limits
        .iter()
        .map(|&(bytes, what)| (bytes, what))
        .chain(available.map(|a| {
            (
                a + rss,
                "the machine's available memory and what this process holds",
            )
        }))
        .min_by_key(|&(bytes, _)| bytes)?;
    (needed > room.0).then(|| {
        format!(
            "training {params} parameters needs at least {} (weights, gradients and optimizer \
             state, {} bytes a parameter, and {} more while a checkpoint is written), more than \
             the {} this process may use ({}): expect it to fail for memory, at the first \
             checkpoint if not before. Narrower model.denoiser.dims (L-DiffRec: \
             model.autoencoder.dims) make the model smaller",
            size(needed),
            held / params.max(1) as u64,
            size(checkpoint_bytes(params, averaged)),
            size(room.0),
            room.1
        )
    })
}

/// `bytes` for messages: in GiB, MiB or KiB.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0x4000_0000.. => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        0x10_0000.. => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        _ => format!("{:.0} KiB", b / 1024.0),
    }
}

/// The limits on this process's total memory that Linux reports: the address-space limit
/// (`ulimit -v`) and the cgroup's (a container's memory limit). Empty elsewhere.
pub fn process_limits() -> Vec<(u64, &'static str)> {
    let mut limits = Vec::new();
    if let Some(bytes) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| address_space_limit(&t))
    {
        limits.push((bytes, "the address-space limit, ulimit -v"));
    }
    if let Some(bytes) = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        limits.push((bytes, "the cgroup's memory.max, a container's limit"));
    }
    limits
}

/// The machine's available memory (`MemAvailable` of /proc/meminfo), where Linux says.
pub fn available() -> Option<u64> {
    meminfo_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// This process's resident set now (`VmRSS`), 0 where unknown.
pub fn rss_bytes() -> u64 {
    status_field("VmRSS:")
}

/// Peak resident set size of this process (`VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    status_field("VmHWM:")
}

/// A kB field of /proc/self/status, in bytes; 0 where unknown.
fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| kib_field(&s, name))
        .unwrap_or(0)
}

/// The soft "Max address space" of a /proc/<pid>/limits text; `None` when unlimited.
fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn meminfo_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable:")
}

/// A "<name> <n> kB" field of a /proc text, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proc_texts() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max stack size            8388608              unlimited            bytes     \n\
                      Max address space         8192000000           unlimited            bytes     \n";
        assert_eq!(address_space_limit(limits), Some(8_192_000_000));
        let unlimited = limits.replace("8192000000  ", "unlimited   ");
        assert_eq!(address_space_limit(&unlimited), None);
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }

    /// 210,328,832 parameters (DiffRec [200, 600] over 175k items) need 28 bytes each at
    /// least: 5.89 GB (5.48 GiB), within an 8 GB address space, past a 5 GB one.
    #[test]
    fn warns_where_the_floor_passes_the_smallest_limit() {
        let params = 210_328_832;
        let ulimit = [(8_000_000_000, "ulimit")];
        assert_eq!(checkpoint_bytes(params, false), 2_523_945_984);
        assert!(shortfall(params, false, 0, &ulimit, None).is_none());
        let tight = [(5_000_000_000, "ulimit")];
        let said = shortfall(params, false, 0, &tight, None).unwrap();
        assert!(
            said.contains("needs at least 5.48 GiB") && said.contains("(ulimit)"),
            "{said}"
        );
        assert!(
            said.contains("16 bytes a parameter") && said.contains("2.35 GiB more"),
            "{said}"
        );
        // The machine's available memory counts beyond what the process already holds.
        let rss = 1 << 30;
        assert!(shortfall(params, false, rss, &[], Some(5_000_000_000)).is_none());
        assert!(shortfall(params, false, rss, &[], Some(4_000_000_000)).is_some());
        // The average adds 4 + 4 bytes a parameter: 36 in all.
        assert!(shortfall(params, true, 0, &[(7_000_000_000, "x")], None).is_some());
        assert!(shortfall(params, false, 0, &[(7_000_000_000, "x")], None).is_none());
        assert!(shortfall(params, false, 0, &[], None).is_none());
        assert_eq!(
            [size(42_410 * 12), size(3 << 20), size(5 << 30)],
            ["497 KiB", "3.0 MiB", "5.00 GiB"]
        );
    }
}
