//! Which resource a URL names, and the kinds the fake knows.
//!
//! Resources are generic: any `{plural}` under `/api/v1` or `/apis/{group}/{version}` is
//! stored and served the same way. The kind table only names what the API answers with
//! (`kind`, the list's kind); a plural missing from it gets a kind guessed from the plural.

/// A resource type: `pods` in the core group, `deployments` in `apps/v1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Resource {
    /// `""` for the core group.
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) plural: String,
}

/// The kinds of the resources Wellspring's Kubernetes code and its tests use, and a few
/// more, so that answers carry the kind the real API server would.
const KINDS: &[(&str, &str)] = &[
    ("pods", "Pod"),
    ("leases", "Lease"),
    ("jobs", "Job"),
    ("cronjobs", "CronJob"),
    ("deployments", "Deployment"),
    ("statefulsets", "StatefulSet"),
    ("replicasets", "ReplicaSet"),
    ("daemonsets", "DaemonSet"),
    ("configmaps", "ConfigMap"),
    ("secrets", "Secret"),
    ("services", "Service"),
    ("serviceaccounts", "ServiceAccount"),
    ("endpoints", "Endpoints"),
    ("endpointslices", "EndpointSlice"),
    ("events", "Event"),
    ("persistentvolumeclaims", "PersistentVolumeClaim"),
    ("poddisruptionbudgets", "PodDisruptionBudget"),
    ("horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("roles", "Role"),
    ("rolebindings", "RoleBinding"),
];

impl Resource {
    /// `v1` for the core group, `group/version` otherwise.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(crate) fn kind(&self) -> String {
        if let Some((_, kind)) = KINDS.iter().find(|(plural, _)| *plural == self.plural) {
            return (*kind).to_owned();
        }
        let singular = if let Some(stem) = self.plural.strip_suffix("ies") {
            format!("{stem}y")
        } else {
            self.plural
                .strip_suffix('s')
                .unwrap_or(&self.plural)
                .to_owned()
        };
        let mut chars = singular.chars();
        match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => singular,
        }
    }

    pub(crate) fn list_kind(&self) -> String {
        format!("{}List", self.kind())
    }

    /// How the real server names a resource in its messages: `pods`, `deployments.apps`.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The objects of one resource in one namespace: what a collection URL names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Collection {
    pub(crate) resource: Resource,
    pub(crate) namespace: String,
}

/// Which namespaces a list or a watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Namespace(String),
    /// `/api/v1/pods`: every namespace (`kube::Api::all`).
    All,
}

impl Scope {
    pub(crate) fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::Namespace(own) => own == namespace,
            Scope::All => true,
        }
    }
}

/// What a request's path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Collection {
        resource: Resource,
        scope: Scope,
    },
    Object {
        collection: Collection,
        name: String,
        /// `scale`, `status`.
        subresource: Option<String>,
    },
}

impl Target {
    pub(crate) fn resource(&self) -> &Resource {
        match self {
            Target::Collection { resource, .. } => resource,
            Target::Object { collection, .. } => &collection.resource,
        }
    }

    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Target::Collection { .. } => None,
            Target::Object { name, .. } => Some(name),
        }
    }
}

/// Parses `/api/v1/namespaces/{ns}/{plural}[/{name}[/{subresource}]]`, its `/apis/{group}/
/// {version}/...` form, and the all-namespaces collections `/api/v1/{plural}`.
pub(crate) fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let resource = |plural: &str| Resource {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
    };
    let collection = |namespace: &str, plural: &str| Collection {
        resource: resource(plural),
        namespace: namespace.to_owned(),
    };
    match rest {
        ["namespaces", namespace, plural] => Some(Target::Collection {
            resource: resource(plural),
            scope: Scope::Namespace((*namespace).to_owned()),
        }),
        ["namespaces", namespace, plural, name] => Some(Target::Object {
            collection: collection(namespace, plural),
            name: (*name).to_owned(),
            subresource: None,
        }),
        ["namespaces", namespace, plural, name, subresource] => Some(Target::Object {
            collection: collection(namespace, plural),
            name: (*name).to_owned(),
            subresource: Some((*subresource).to_owned()),
        }),
        [plural] => Some(Target::Collection {
            resource: resource(plural),
            scope: Scope::All,
        }),
        _ => None,
    }
}

/// The collection a test names with its URL path (`/api/v1/namespaces/lab/pods`).
pub(crate) fn parse_collection(path: &str) -> Option<Collection> {
    match parse_path(path)? {
        Target::Collection {
            resource,
            scope: Scope::Namespace(namespace),
        } => Some(Collection {
            resource,
            namespace,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_objects_and_subresources() {
        let Some(Target::Object {
            collection,
            name,
            subresource,
        }) = parse_path("/apis/apps/v1/namespaces/lab/deployments/web/scale")
        else {
            panic!("a subresource path is an object");
        };
        assert_eq!(collection.resource.qualified(), "deployments.apps");
        assert_eq!(collection.resource.api_version(), "apps/v1");
        assert_eq!(collection.namespace, "lab");
        assert_eq!(name, "web");
        assert_eq!(subresource.as_deref(), Some("scale"));

        let pods = parse_collection("/api/v1/namespaces/lab/pods").expect("a collection");
        assert_eq!(pods.resource.api_version(), "v1");
        assert_eq!(pods.resource.qualified(), "pods");
        assert_eq!(pods.resource.list_kind(), "PodList");
        assert_eq!(
            parse_path("/api/v1/pods"),
            Some(Target::Collection {
                resource: pods.resource.clone(),
                scope: Scope::All
            })
        );
        assert_eq!(parse_path("/healthz"), None);
        assert_eq!(parse_path("/api/v1/namespaces/lab/pods/a/b/c"), None);
        assert_eq!(parse_collection("/api/v1/namespaces/lab/pods/a"), None);
    }

    #[test]
    fn kinds_come_from_the_table_or_the_plural() {
        let kind = |plural: &str| {
            Resource {
                group: "example.org".into(),
                version: "v1".into(),
                plural: plural.into(),
            }
            .kind()
        };
        assert_eq!(kind("leases"), "Lease");
        assert_eq!(kind("configmaps"), "ConfigMap");
        assert_eq!(kind("widgets"), "Widget");
        assert_eq!(kind("policies"), "Policy");
    }
}
