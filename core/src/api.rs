//! OpenFaaS's REST API shapes: `FunctionDeployment` in, `FunctionStatus` out. Field names and
//! optionality follow `faas-provider/types` so faas-cli and existing scripts work unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Reads `null` as the field's default, as Go clients (faas-cli) may send it for maps and lists.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// CPU and memory, as strings in Kubernetes notation. Recorded, not enforced by the process provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionResources {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
}

/// The body of `POST|PUT /system/functions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    pub service: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env_vars: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub constraints: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
}

/// One entry of `GET /system/functions`, and the body of `GET /system/function/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_process: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env_vars: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub constraints: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    #[serde(default)]
    pub invocation_count: f64,
    #[serde(default)]
    pub replicas: u64,
    #[serde(default)]
    pub available_replicas: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// Sluice's: the replica count the autoscaler last decided on, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replicas: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_reason: Option<String>,
}

impl FunctionDeployment {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_faas_cli_sends() {
        let body = r#"{"service":"y","image":"x","envProcess":"cat","labels":{},"annotations":{}}"#;
        let d: FunctionDeployment = serde_json::from_str(body).unwrap();
        assert_eq!(d.service, "y");
        assert_eq!(d.env_process.as_deref(), Some("cat"));
        assert_eq!(d.labels, Some(BTreeMap::new()));
    }

    #[test]
    fn nulls_read_as_empty() {
        let body = r#"{"service":"y","image":null,"envVars":null,"secrets":null,"constraints":null,"labels":null}"#;
        let d: FunctionDeployment = serde_json::from_str(body).unwrap();
        assert!(d.env_vars.is_empty() && d.secrets.is_empty() && d.labels.is_none());
    }

    #[test]
    fn status_uses_openfaas_field_names() {
        let s = FunctionStatus {
            name: "echo".into(),
            namespace: Some("openfaas-fn".into()),
            env_process: Some("cat".into()),
            replicas: 2,
            available_replicas: 1,
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["envProcess"], "cat");
        assert_eq!(v["availableReplicas"], 1);
        assert_eq!(v["invocationCount"], 0.0);
    }
}
