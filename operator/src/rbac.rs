//! The Kubernetes permissions the operator needs, one rule per API it calls, and why.
//!
//! This table is the source of the chart's ClusterRole and Role (a chart test checks they are
//! equal), and the test API server (`testing`, feature `testing`) refuses every request of the
//! operator's client that the table does not grant, as RBAC would, so the operator's tests
//! fail if a call is missing here.

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everywhere (a ClusterRole): runs, their pods and the nodes are in any namespace.
    Cluster,
    /// The operator's own namespace only (a Role): its leader Lease.
    OperatorNamespace,
}

/// One RBAC rule: these verbs on these resources of one API group.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The API group; "" for the core group.
    pub group: &'static str,
    /// Plural resource names; `name/status` for a status subresource.
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// The code path that needs it.
    pub why: &'static str,
}

/// Every permission the operator uses. Server-side apply of an object that does not exist yet
/// needs `create` besides `patch`.
pub const RULES: &[Rule] = &[
    Rule {
        group: "tessera.dev",
        resources: &["trainingruns"],
        verbs: &["list", "watch", "patch", "delete"],
        scope: Scope::Cluster,
        why: "the controller's watch; the finalizer (JSON patch); ttlSecondsAfterFinished",
    },
    Rule {
        group: "tessera.dev",
        resources: &["trainingruns/status"],
        verbs: &["patch"],
        scope: Scope::Cluster,
        why: "status, by server-side apply",
    },
    Rule {
        group: "",
        resources: &["pods"],
        verbs: &["list", "watch", "create", "patch", "delete"],
        scope: Scope::Cluster,
        why: "worker pods (server-side apply, deletion); every pod's GPUs count in admission",
    },
    Rule {
        group: "",
        resources: &["services"],
        verbs: &["list", "watch", "create", "patch"],
        scope: Scope::Cluster,
        why: "each run's headless Service",
    },
    Rule {
        group: "",
        resources: &["configmaps"],
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "each run's manifest, mounted by its workers",
    },
    Rule {
        group: "",
        resources: &["nodes"],
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        why: "GPU capacity and readiness for gang admission and node loss",
    },
    Rule {
        group: "scheduling.k8s.io",
        resources: &["priorityclasses"],
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        why: "waiting runs are admitted by priority",
    },
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "an Event for every transition of a run",
    },
    Rule {
        group: "scheduling.x-k8s.io",
        resources: &["podgroups"],
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "the PodGroup of a run under the coscheduling plugin",
    },
    Rule {
        group: "scheduling.volcano.sh",
        resources: &["podgroups"],
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "the PodGroup of a run under Volcano",
    },
    Rule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "update"],
        scope: Scope::OperatorNamespace,
        why: "leader election",
    },
];

/// Whether the rules grant `verb` on `resource` (`plural` or `plural/status`) of `group`.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RULES.iter().any(|rule| {
        rule.group == group && rule.resources.contains(&resource) && rule.verbs.contains(&verb)
    })
}

/// Every (group, resource, verb) the rules grant, with their scope.
pub fn grants() -> Vec<(&'static str, &'static str, &'static str, Scope)> {
    let mut all = Vec::new();
    for rule in RULES {
        for resource in rule.resources {
            for verb in rule.verbs {
                all.push((rule.group, *resource, *verb, rule.scope));
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_grant_appears_once_and_every_rule_says_why() {
        let mut seen = std::collections::BTreeSet::new();
        for (group, resource, verb, _) in grants() {
            assert!(
                seen.insert((group, resource, verb)),
                "{group}/{resource} {verb} is granted twice"
            );
        }
        assert!(
            RULES
                .iter()
                .all(|r| !r.why.is_empty() && !r.verbs.is_empty())
        );
        assert!(allows("", "pods", "delete"));
        assert!(
            !allows("", "secrets", "get"),
            "the operator reads no secrets"
        );
        assert!(!allows("tessera.dev", "trainingruns", "update"));
    }
}
