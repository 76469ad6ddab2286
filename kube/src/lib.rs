//! `sluice-kube`: the Kubernetes provider.
//!
//! A function is a Deployment and a Service in its namespace, shaped as OpenFaaS's faas-netes
//! shapes them ([`objects`]). [`KubeProvider`] is the [`sluice_core::Orchestrator`] (create,
//! roll, scale through the scale subresource, remove, logs) and the
//! [`sluice_core::EndpointSource`] (ready pod addresses from EndpointSlices, kept by watchers,
//! never polled) of the cluster form.

pub mod objects;

mod cache;
mod error;
pub mod lease;
mod provider;

pub use provider::{KubeConfig, KubeProvider, NAMESPACE_LABEL, SECRET_LABEL};
