//! What a caller may do: roles on namespaces, written `namespace:role` (`finance:write`,
//! `*:read`, `*:worker`), as a token's permissions claim carries them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A role on a namespace. `admin` includes `write`, which includes `read`; `worker` (the
/// managers' lease protocol) is apart from them: a person's admin token cannot lease
/// tasks, and a manager's token cannot read jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
    Worker,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 4] = [Role::Read, Role::Write, Role::Admin, Role::Worker];

    /// The name in permissions and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    /// Whether holding `self` grants `wanted`.
    pub fn includes(self, wanted: Role) -> bool {
        matches!(
            (self, wanted),
            (Role::Admin, Role::Read | Role::Write | Role::Admin)
                | (Role::Write, Role::Read | Role::Write)
                | (Role::Read, Role::Read)
                | (Role::Worker, Role::Worker)
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (known: read, write, admin, worker)"))
    }
}

/// Every namespace, in a grant.
pub const ANY_NAMESPACE: &str = "*";

/// One role on one namespace (or on every namespace, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub namespace: String,
    pub role: Role,
}

impl Grant {
    /// Whether this grant gives `role` on `namespace`.
    pub fn allows(&self, namespace: &str, role: Role) -> bool {
        (self.namespace == ANY_NAMESPACE || self.namespace == namespace) && self.role.includes(role)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace, self.role)
    }
}

impl FromStr for Grant {
    type Err = String;
    /// `namespace:role`; the namespace is `*` or a namespace name.
    fn from_str(s: &str) -> Result<Grant, String> {
        let (ns, role) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("permission {s:?} must look like namespace:role, e.g. finance:write"))?;
        let ok_ns = ns == ANY_NAMESPACE
            || (!ns.is_empty()
                && ns.len() <= 64
                && ns.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
        if !ok_ns {
            return Err(format!("permission {s:?}: {ns:?} is not a namespace name or *"));
        }
        Ok(Grant { namespace: ns.to_string(), role: role.parse().map_err(|e| format!("permission {s:?}: {e}"))? })
    }
}

/// Which namespaces a caller may see with a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// Only these (possibly none).
    Only(BTreeSet<String>),
}

impl Scope {
    /// Whether `namespace` is in the scope.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(s) => s.contains(namespace),
        }
    }
}

/// A caller's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(BTreeSet<Grant>);

impl Grants {
    /// Every role on every namespace: the caller when authentication is off.
    pub fn everything() -> Grants {
        Grants(Role::ALL.into_iter().map(|role| Grant { namespace: ANY_NAMESPACE.into(), role }).collect())
    }

    /// Parses each `namespace:role` entry, naming the first bad one.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Grants, String> {
        entries.into_iter().map(str::parse).collect::<Result<BTreeSet<Grant>, String>>().map(Grants)
    }

    /// Whether some grant gives `role` on `namespace`.
    pub fn allows(&self, namespace: &str, role: Role) -> bool {
        self.0.iter().any(|g| g.allows(namespace, role))
    }

    /// Whether some grant gives `role` on every namespace.
    pub fn allows_everywhere(&self, role: Role) -> bool {
        self.0.iter().any(|g| g.namespace == ANY_NAMESPACE && g.role.includes(role))
    }

    /// The namespaces in which `role` is granted.
    pub fn scope(&self, role: Role) -> Scope {
        if self.allows_everywhere(role) {
            return Scope::All;
        }
        Scope::Only(self.0.iter().filter(|g| g.role.includes(role)).map(|g| g.namespace.clone()).collect())
    }

    /// Whether the caller holds no grant at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The grants, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.0.iter()
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(Grant::to_string).collect();
        f.write_str(&all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_worker_stands_apart() {
        assert!(Role::Admin.includes(Role::Read) && Role::Admin.includes(Role::Write));
        assert!(Role::Write.includes(Role::Read) && !Role::Write.includes(Role::Admin));
        assert!(!Role::Read.includes(Role::Write));
        assert!(!Role::Admin.includes(Role::Worker) && !Role::Worker.includes(Role::Read));
    }

    #[test]
    fn grants_scope_namespaces() {
        let g = Grants::parse(["finance:write", "*:read"]).expect("valid");
        assert!(g.allows("finance", Role::Write) && g.allows("finance", Role::Read));
        assert!(g.allows("marketing", Role::Read) && !g.allows("marketing", Role::Write));
        assert_eq!(g.scope(Role::Read), Scope::All);
        assert_eq!(g.scope(Role::Write), Scope::Only(["finance".to_string()].into()));
        assert_eq!(g.scope(Role::Admin), Scope::Only(Default::default()));
        let w = Grants::parse(["*:worker"]).expect("valid");
        assert!(w.allows("any", Role::Worker) && !w.allows("any", Role::Read));
        assert!(Grants::everything().allows_everywhere(Role::Admin));
    }

    #[test]
    fn bad_permissions_are_named() {
        assert!(Grants::parse(["finance"]).unwrap_err().contains("namespace:role"));
        assert!(Grants::parse(["finance:own"]).unwrap_err().contains("unknown role \"own\""));
        assert!(Grants::parse(["fi nance:read"]).unwrap_err().contains("not a namespace"));
        assert!(Grants::parse([":read"]).is_err());
    }
}
