//! Names, labels and annotations the operator puts on what it creates, in one place.
//!
//! Kubernetes limits differ by field: object names may be 253 characters, but a Service name,
//! a pod hostname and a label value must be DNS labels of at most 63. A run whose name does
//! not fit is given a shortened form with a hash of the full name, so two long names that
//! share a prefix still get different labels.

/// The finalizer that makes deletion wait until the run's store keys are removed.
pub const FINALIZER: &str = "tessera.dev/cleanup";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "tessera-operator";

/// Label on every pod, service and pod group of a run: the run's label form.
pub const LABEL_RUN: &str = "tessera.dev/run";
/// Label on pods: the gang generation the pod belongs to.
pub const LABEL_GENERATION: &str = "tessera.dev/generation";
/// Label on pods: the node rank (0-based) of the pod within its gang.
pub const LABEL_NODE_RANK: &str = "tessera.dev/node-rank";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";

/// A run carrying this label is admitted by Kueue, which unsuspends it when it fits.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// The scheduler-plugins coscheduling label naming a pod's PodGroup.
pub const COSCHEDULING_POD_GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";
/// Volcano's annotation naming a pod's PodGroup.
pub const VOLCANO_GROUP_ANNOTATION: &str = "scheduling.k8s.io/group-name";

/// The most characters a DNS label (service name, hostname, label value) may hold.
const DNS_LABEL_MAX: usize = 63;

/// A DNS-1035 label for `name`: the name itself when it already is one, otherwise a shortened,
/// lower-case form ending in a hash of the full name.
pub fn dns_label(name: &str) -> String {
    let valid = !name.is_empty()
        && name.len() <= DNS_LABEL_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        return name.to_string();
    }
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let hash = format!("{:08x}", fnv1a(name.as_bytes()) as u32);
    // Leaves room for "tr-" in front and "-" + the hash behind.
    let keep: String = cleaned
        .trim_start_matches(|c: char| !c.is_ascii_lowercase())
        .chars()
        .take(DNS_LABEL_MAX - 3 - 1 - hash.len())
        .collect();
    let keep = keep.trim_end_matches('-');
    if keep.is_empty() {
        format!("tr-{hash}")
    } else {
        format!("{keep}-{hash}")
    }
}

/// The label value and Service name of a run.
pub fn run_label(run_name: &str) -> String {
    dns_label(run_name)
}

/// The headless Service of a run: gives each worker the DNS name `{hostname}.{service}`.
pub fn service_name(run_name: &str) -> String {
    run_label(run_name)
}

/// The pod hostname of a node rank; stable across generations, so rank 0's DNS name (the
/// rendezvous address) never changes.
pub fn hostname(run_name: &str, node_rank: u32) -> String {
    let suffix = format!("-{node_rank}");
    let base = run_label(run_name);
    let room = DNS_LABEL_MAX - suffix.len();
    let base = if base.len() > room {
        base[..room].trim_end_matches('-').to_string()
    } else {
        base
    };
    format!("{base}{suffix}")
}

/// The pod name of a node rank in a generation. Generations get distinct names so that a new
/// gang never collides with (or server-side-applies onto) a pod of the previous one.
pub fn pod_name(run_name: &str, generation: u64, node_rank: u32) -> String {
    format!("{}-g{generation}-{node_rank}", run_label(run_name))
}

/// The ConfigMap holding a run's manifest for its agents.
pub fn manifest_config_map_name(run_name: &str) -> String {
    format!("{}-manifest", run_label(run_name))
}

/// The PodGroup of a run (gang schedulers).
pub fn pod_group_name(run_name: &str) -> String {
    run_label(run_name)
}

/// FNV-1a, 64 bits: a stable hash for shortened names (no dependency, same on every build).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(run_label("gpt2-small"), "gpt2-small");
        assert_eq!(hostname("gpt2-small", 3), "gpt2-small-3");
        assert_eq!(pod_name("gpt2-small", 2, 0), "gpt2-small-g2-0");
    }

    #[test]
    fn long_or_dotted_names_become_distinct_dns_labels() {
        let long_a = format!("{}a", "x".repeat(100));
        let long_b = format!("{}b", "x".repeat(100));
        for name in [
            long_a.as_str(),
            long_b.as_str(),
            "run.v2",
            "9lives",
            "...",
            "UPPER",
        ] {
            let label = run_label(name);
            assert!(is_dns_label(&label), "{name} → {label}");
            assert!(is_dns_label(&hostname(name, 4095)), "{name}");
        }
        assert_ne!(run_label(&long_a), run_label(&long_b));
        assert_ne!(run_label("run.v2"), run_label("run-v2"));
    }
}
