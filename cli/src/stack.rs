//! OpenFaaS's `stack.yml`, as `faas-cli deploy -f` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use sluice_core::config::LANG_ANNOTATION;
use sluice_core::{FunctionDeployment, FunctionResources};
use sluice_provider::WORKDIR_ANNOTATION;

#[derive(Debug, Deserialize)]
pub struct Stack {
    #[serde(default)]
    pub provider: Option<StackProvider>,
    #[serde(default)]
    pub functions: BTreeMap<String, StackFunction>,
}

#[derive(Debug, Deserialize)]
pub struct StackProvider {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct StackFunction {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub handler: Option<String>,
    /// The OpenFaaS template whose server runs the handler (`python3-http`, `node20`, ...).
    #[serde(default)]
    pub lang: Option<String>,
    #[serde(default)]
    pub fprocess: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub limits: Option<FunctionResources>,
    #[serde(default)]
    pub requests: Option<FunctionResources>,
    #[serde(default)]
    pub readonly_root_filesystem: bool,
}

/// YAML scalars (`max_inflight: 10`, `zero: true`) as the strings OpenFaaS's API carries.
fn scalar(key: &str, v: &serde_yaml::Value) -> anyhow::Result<String> {
    Ok(match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Null => String::new(),
        _ => anyhow::bail!("{key} must be a string, number or boolean"),
    })
}

fn strings(map: &BTreeMap<String, serde_yaml::Value>) -> anyhow::Result<BTreeMap<String, String>> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), scalar(k, v)?)))
        .collect()
}

impl Stack {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{} is not a valid stack file", path.display()))
    }

    /// Reads a stack file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(serde_yaml::from_str(text)?)
    }
}

impl StackFunction {
    /// The deployment for function `name`; `stack_dir` anchors a relative `handler`.
    pub fn deployment(&self, name: &str, stack_dir: &Path) -> anyhow::Result<FunctionDeployment> {
        let ctx = || format!("function {name} in the stack file");
        let mut annotations = self
            .annotations
            .as_ref()
            .map(strings)
            .transpose()
            .with_context(ctx)?;
        if let Some(lang) = &self.lang {
            if self.handler.is_none() {
                anyhow::bail!("function {name} names lang {lang:?} but no handler: directory");
            }
            annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(LANG_ANNOTATION.to_owned(), lang.clone());
        }
        if let Some(handler) = &self.handler {
            let dir: PathBuf = stack_dir.join(handler);
            let dir = dir.canonicalize().with_context(|| {
                format!("handler directory {} of function {name}", dir.display())
            })?;
            annotations
                .get_or_insert_with(BTreeMap::new)
                .entry(WORKDIR_ANNOTATION.to_owned())
                .or_insert_with(|| dir.display().to_string());
        }
        Ok(FunctionDeployment {
            service: name.to_owned(),
            image: self.image.clone().unwrap_or_default(),
            namespace: self.namespace.clone(),
            env_process: self.fprocess.clone(),
            env_vars: strings(&self.environment).with_context(ctx)?,
            constraints: self.constraints.clone(),
            secrets: self.secrets.clone(),
            labels: Some(
                self.labels
                    .as_ref()
                    .map(strings)
                    .transpose()
                    .with_context(ctx)?
                    .unwrap_or_default(),
            ),
            annotations: Some(annotations.unwrap_or_default()),
            limits: self.limits.clone(),
            requests: self.requests.clone(),
            read_only_root_filesystem: self.readonly_root_filesystem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_stack_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions");
        let stack = Stack::load(&dir.join("stack.yml")).unwrap();
        assert_eq!(
            stack.provider.unwrap().gateway.as_deref(),
            Some("http://127.0.0.1:8080")
        );
        let echo = stack.functions["echo"].deployment("echo", &dir).unwrap();
        assert_eq!(echo.env_vars["mode"], "http");
        let workdir = echo.annotation(WORKDIR_ANNOTATION).unwrap();
        assert!(Path::new(workdir).join("echo.py").is_file());
        let sleep = stack.functions["sleep"].deployment("sleep", &dir).unwrap();
        assert_eq!(sleep.label("com.openfaas.scale.min"), Some("2"));
    }

    use proptest::prelude::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any text as a stack file: read or refused with an error, never a panic; and so for
        /// every function's deployment in what was read.
        #[test]
        fn any_text_reads_or_is_refused(text in ".{0,400}") {
            if let Ok(stack) = Stack::parse(&text) {
                for (name, f) in &stack.functions {
                    let _ = f.deployment(name, Path::new("."));
                }
            }
        }

        /// Generated stack files with odd scalars: each function comes out with its name, its
        /// command and its values as strings.
        #[test]
        fn generated_stacks_read_whole(
            functions in proptest::collection::btree_map("[a-z][a-z0-9-]{0,10}", ("[a-z][a-z ]{0,19}", proptest::collection::btree_map("[a-z_]{1,8}", proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(|n| n.to_string()),
                proptest::prelude::any::<bool>().prop_map(|b| b.to_string()),
                "[a-z]{0,8}".prop_map(|s| format!("'{s}'")),
            ], 0..4)), 1..4),
        ) {
            let mut yaml = String::from("version: 1.0\nfunctions:\n");
            for (name, (process, env)) in &functions {
                yaml.push_str(&format!("  {name}:\n    fprocess: {process}\n    environment:\n"));
                for (k, v) in env {
                    yaml.push_str(&format!("      {k}: {v}\n"));
                }
            }
            let stack = Stack::parse(&yaml).unwrap();
            proptest::prop_assert_eq!(stack.functions.len(), functions.len());
            for (name, (process, env)) in &functions {
                let d = stack.functions[name].deployment(name, Path::new(".")).unwrap();
                proptest::prop_assert_eq!(&d.service, name);
                proptest::prop_assert_eq!(d.env_process.as_deref(), Some(process.trim()));
                for (k, v) in env {
                    proptest::prop_assert_eq!(&d.env_vars[k], v.trim_matches('\''));
                }
            }
        }
    }

    #[test]
    fn fprocess_in_the_environment_is_sent_as_faas_cli_sends_it() {
        // faas-cli sends `environment` as envVars and `fprocess` alone as envProcess; the
        // provider takes envVars.fprocess when envProcess is empty.
        let yaml = "functions:\n  f:\n    environment:\n      fprocess: wc -c\n";
        let d = Stack::parse(yaml).unwrap().functions["f"]
            .deployment("f", Path::new("."))
            .unwrap();
        assert_eq!(d.env_process, None);
        assert_eq!(d.env_vars["fprocess"], "wc -c");
    }

    #[test]
    fn scalars_become_strings() {
        let yaml = "functions:\n  f:\n    fprocess: cat\n    environment:\n      max_inflight: 10\n      debug: true\n";
        let stack: Stack = serde_yaml::from_str(yaml).unwrap();
        let d = stack.functions["f"]
            .deployment("f", Path::new("."))
            .unwrap();
        assert_eq!(d.env_vars["max_inflight"], "10");
        assert_eq!(d.env_vars["debug"], "true");
    }
}
