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

/// The label OpenFaaS tools select a function's objects by (`faas_function=<name>`): on every
/// `FunctionStatus`, and on the Kubernetes objects. Sluice sets it; it is never stored as one
/// of the deployment's own labels.
pub const FUNCTION_LABEL: &str = "faas_function";

/// CPU and memory used by all of a function's replicas, as faas-provider reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionUsage {
    /// CPU used since the last measurement, in the unit of Kubernetes' millicores.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu: f64,
    /// Memory used by all replicas, in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total_memory_bytes: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
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
    /// What the replicas use, where the provider measures it (local HTTP-mode replicas); left
    /// out elsewhere, as faas-provider's `omitempty` leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<FunctionUsage>,
    /// Sluice's: the replica count the autoscaler last decided on, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replicas: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_reason: Option<String>,
    /// Sluice's: what stops the function's replicas from running, in the orchestrator's words
    /// (an image that cannot be pulled, a crash loop, a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Sluice's: set while the function's replicas keep exiting (see [`CrashLoop`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_loop: Option<CrashLoop>,
}

/// A function whose replicas keep exiting: each run ended before it became ready (or soon
/// after), [`CrashLoop::exits`] times in a row. It lasts until a replica becomes ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrashLoop {
    /// How the last run ended: `exited with status 3`, `killed by signal 9`, `cannot start ...`.
    pub exit: String,
    /// Runs in a row that ended too soon.
    pub exits: u32,
    /// The last run's last lines of output, oldest first: at most [`CrashLoop::MAX_LINES`],
    /// each cut at [`CrashLoop::MAX_LINE_CHARS`] characters.
    #[serde(default)]
    pub last_lines: Vec<String>,
}

impl CrashLoop {
    pub const MAX_LINES: usize = 5;
    pub const MAX_LINE_CHARS: usize = 200;

    /// Keeps the last [`Self::MAX_LINES`] of `lines`, each cut to [`Self::MAX_LINE_CHARS`].
    pub fn new(exit: String, exits: u32, lines: impl IntoIterator<Item = String>) -> Self {
        let mut last_lines: Vec<String> = lines.into_iter().collect();
        let skip = last_lines.len().saturating_sub(Self::MAX_LINES);
        last_lines.drain(..skip);
        let last_lines = last_lines
            .into_iter()
            .map(|line| truncate_chars(line, Self::MAX_LINE_CHARS))
            .collect();
        Self {
            exit: truncate_chars(exit, Self::MAX_LINE_CHARS),
            exits,
            last_lines,
        }
    }

    /// The last line of output, if there was any.
    pub fn last_line(&self) -> Option<&str> {
        self.last_lines.last().map(String::as_str)
    }
}

fn truncate_chars(mut s: String, max: usize) -> String {
    if let Some((cut, _)) = s.char_indices().nth(max) {
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// `crash-looping: exited with status 3 (3 times in a row); last output: boom`.
impl std::fmt::Display for CrashLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crash-looping: {} ({} time{} in a row)",
            self.exit,
            self.exits,
            if self.exits == 1 { "" } else { "s" }
        )?;
        if self.last_lines.is_empty() {
            write!(f, "; no output")
        } else {
            write!(f, "; last output: {}", self.last_lines.join(" | "))
        }
    }
}

impl FunctionDeployment {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// Checks the deployment stays within [`DeploymentBounds`]: a registry entry is listed by
    /// every `GET /system/functions`, so one huge deployment would weigh on every list.
    pub fn check_bounds(&self) -> Result<(), String> {
        let b = DeploymentBounds::DEFAULT;
        let text = |what: &str, value: &str, max: usize| {
            if value.len() > max {
                Err(format!(
                    "{what} is {} bytes; at most {max} are taken",
                    value.len()
                ))
            } else if value.contains('\0') {
                Err(format!("{what} contains a NUL character"))
            } else {
                Ok(())
            }
        };
        let map = |what: &str, map: Option<&BTreeMap<String, String>>, entries, key_max, total| {
            let Some(map) = map else { return Ok(()) };
            if map.len() > entries {
                return Err(format!(
                    "{what} has {} entries; at most {entries} are taken",
                    map.len()
                ));
            }
            let mut bytes = 0;
            for (k, v) in map {
                if k.is_empty() {
                    return Err(format!("{what} has an empty key"));
                }
                text(&format!("{what} key {:?}", truncate(k)), k, key_max)?;
                text(&format!("{what} {:?}", truncate(k)), v, total)?;
                bytes += k.len() + v.len();
            }
            if bytes > total {
                return Err(format!(
                    "{what} are {bytes} bytes in all; at most {total} are taken"
                ));
            }
            Ok(())
        };
        let list = |what: &str, list: &[String]| {
            if list.len() > b.list_entries {
                return Err(format!(
                    "{what} has {} entries; at most {} are taken",
                    list.len(),
                    b.list_entries
                ));
            }
            list.iter()
                .try_for_each(|v| text(&format!("an entry of {what}"), v, b.list_entry_bytes))
        };
        text("image", &self.image, b.image_bytes)?;
        text(
            "envProcess",
            self.env_process.as_deref().unwrap_or_default(),
            b.process_bytes,
        )?;
        let label_bytes = b.label_entries * (b.key_bytes + b.label_value_bytes);
        map(
            "labels",
            self.labels.as_ref(),
            b.label_entries,
            b.key_bytes,
            label_bytes,
        )?;
        if let Some((k, v)) = self
            .labels
            .iter()
            .flatten()
            .find(|(_, v)| v.len() > b.label_value_bytes)
        {
            return Err(format!(
                "label {:?} is {} bytes; at most {} are taken",
                truncate(k),
                v.len(),
                b.label_value_bytes
            ));
        }
        map(
            "annotations",
            self.annotations.as_ref(),
            b.annotation_entries,
            b.key_bytes,
            b.annotation_bytes,
        )?;
        map(
            "envVars",
            Some(&self.env_vars),
            b.env_entries,
            b.key_bytes,
            b.env_bytes,
        )?;
        list("constraints", &self.constraints)?;
        list("secrets", &self.secrets)?;
        for resources in [&self.limits, &self.requests].into_iter().flatten() {
            text("a resource quantity", &resources.memory, 64)?;
            text("a resource quantity", &resources.cpu, 64)?;
        }
        Ok(())
    }
}

/// At most the first 64 characters, to name something in an error.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// How large a deployment may be, field by field (Kubernetes' own limits where it has them).
#[derive(Debug, Clone, Copy)]
pub struct DeploymentBounds {
    pub image_bytes: usize,
    pub process_bytes: usize,
    pub key_bytes: usize,
    pub label_entries: usize,
    pub label_value_bytes: usize,
    pub annotation_entries: usize,
    pub annotation_bytes: usize,
    pub env_entries: usize,
    pub env_bytes: usize,
    pub list_entries: usize,
    pub list_entry_bytes: usize,
}

impl DeploymentBounds {
    pub const DEFAULT: Self = Self {
        image_bytes: 1024,
        process_bytes: 4096,
        // A Kubernetes qualified name: a 253-byte prefix, '/', a 63-byte name.
        key_bytes: 317,
        label_entries: 64,
        label_value_bytes: 1024,
        annotation_entries: 128,
        // As Kubernetes: all annotations of an object together.
        annotation_bytes: 256 * 1024,
        env_entries: 256,
        env_bytes: 256 * 1024,
        list_entries: 64,
        list_entry_bytes: 253,
    };
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
    fn a_crash_loop_keeps_a_few_short_lines_and_says_why() {
        let lines = (0..20)
            .map(|i| format!("line {i}"))
            .chain(["é".repeat(500)]);
        let c = CrashLoop::new("exited with status 3".into(), 3, lines);
        assert_eq!(c.last_lines.len(), CrashLoop::MAX_LINES);
        assert_eq!(c.last_lines[0], "line 16");
        assert_eq!(
            c.last_line().unwrap().chars().count(),
            CrashLoop::MAX_LINE_CHARS + 3
        );
        let c = CrashLoop::new(
            "exited with status 3".into(),
            3,
            ["a".into(), "boom".into()],
        );
        assert_eq!(
            c.to_string(),
            "crash-looping: exited with status 3 (3 times in a row); last output: a | boom"
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["lastLines"][1], "boom");
        let c = CrashLoop::new("killed by signal 9".into(), 1, []);
        assert_eq!(
            c.to_string(),
            "crash-looping: killed by signal 9 (1 time in a row); no output"
        );
    }

    #[test]
    fn nulls_read_as_empty() {
        let body = r#"{"service":"y","image":null,"envVars":null,"secrets":null,"constraints":null,"labels":null}"#;
        let d: FunctionDeployment = serde_json::from_str(body).unwrap();
        assert!(d.env_vars.is_empty() && d.secrets.is_empty() && d.labels.is_none());
    }

    #[test]
    fn oversized_deployments_are_refused_naming_the_field() {
        let ok = FunctionDeployment {
            service: "x".into(),
            env_process: Some("cat".into()),
            labels: Some(BTreeMap::from([("a".into(), "b".into())])),
            ..Default::default()
        };
        assert!(ok.check_bounds().is_ok());
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        let e = FunctionDeployment {
            labels: Some(many),
            ..ok.clone()
        }
        .check_bounds();
        assert!(e.unwrap_err().contains("labels has 65 entries"));
        let huge = BTreeMap::from([("big".to_owned(), "v".repeat(11 * 1024 * 1024))]);
        let e = FunctionDeployment {
            labels: Some(huge.clone()),
            ..ok.clone()
        }
        .check_bounds();
        assert!(e.unwrap_err().contains("labels"));
        let e = FunctionDeployment {
            env_vars: huge,
            ..ok.clone()
        }
        .check_bounds();
        assert!(e.unwrap_err().contains("envVars"));
        let e = FunctionDeployment {
            image: "i".repeat(2000),
            ..ok.clone()
        }
        .check_bounds();
        assert!(e.unwrap_err().contains("image"));
        let e = FunctionDeployment {
            env_process: Some("a\0b".into()),
            ..ok.clone()
        }
        .check_bounds();
        assert!(e.unwrap_err().contains("NUL"));
        let e = FunctionDeployment {
            secrets: vec!["s".into(); 65],
            ..ok
        }
        .check_bounds();
        assert!(e.unwrap_err().contains("secrets"));
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
        assert!(v.get("usage").is_none(), "unknown usage is left out");
        let s = FunctionStatus {
            usage: Some(FunctionUsage {
                cpu: 0.0,
                total_memory_bytes: 1024.0,
            }),
            ..s
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["usage"], serde_json::json!({"totalMemoryBytes": 1024.0}));
    }
}
