//! Listing CRDs without their schemas: the pivot needs each CRD's group, names, scope, labels and
//! versions (served, storage, status subresource), not the OpenAPI schemas that make up almost
//! all of a CRD's size. Decoding only these fields keeps a CRD list cheap even with the large
//! Cluster API schemas.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// A CRD, reduced.
#[derive(Debug, Deserialize)]
pub struct Crd {
    /// Labels only.
    pub metadata: Meta,
    /// The spec without schemas.
    pub spec: Spec,
}

/// Metadata, reduced.
#[derive(Debug, Deserialize)]
pub struct Meta {
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Spec, reduced.
#[derive(Debug, Deserialize)]
pub struct Spec {
    /// API group.
    pub group: String,
    /// Names.
    pub names: Names,
    /// `Namespaced` or `Cluster`.
    pub scope: String,
    /// Versions.
    pub versions: Vec<Version>,
}

/// Names.
#[derive(Debug, Deserialize)]
pub struct Names {
    /// Kind.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
}

/// One version.
#[derive(Debug, Deserialize)]
pub struct Version {
    /// Name (`v1beta2`).
    pub name: String,
    /// Served.
    pub served: bool,
    /// The storage version.
    pub storage: bool,
    /// Subresources.
    #[serde(default)]
    pub subresources: Option<Subresources>,
}

/// Subresources.
#[derive(Debug, Deserialize)]
pub struct Subresources {
    /// Present when the version has a status subresource.
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct List {
    items: Vec<Crd>,
}

/// Lists every CRD of the cluster.
pub async fn list(client: &kube::Client) -> Result<Vec<Crd>, kube::Error> {
    let req = http::Request::get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    Ok(client.request::<List>(req).await?.items)
}
