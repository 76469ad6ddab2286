//! OpenFaaS's `stack.yml` read from its text: what it says, warnings for the keys no version of
//! the format has, and each function's [`FunctionDeployment`].
//!
//! Nothing here reads a file. Where a function's `handler:` directory and `environment_file:`s
//! are is the reader's to say, through [`StackPaths`]: `sluice deploy -f` finds them beside the
//! stack file (`cli/src/stack.rs`), the portal takes only absolute handler directories and reads
//! no file (`gateway/src/ui/pages/deploy.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::{FunctionDeployment, FunctionResources};
use crate::config::{LANG_ANNOTATION, WORKDIR_ANNOTATION};

/// A stack file that cannot be read, or a function in it that cannot be deployed as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// The text is not a stack file (YAML's own words, with where).
    #[error("{0}")]
    Invalid(String),
    /// A function's settings do not make a deployment; the message names the function.
    #[error("{0}")]
    Function(String),
}

/// Where a stack file's paths lead, for the one reading it.
pub trait StackPaths {
    /// `path` as messages name it (`sluice deploy`: joined to the stack file's directory).
    fn shown(&self, path: &str) -> String;

    /// The absolute directory a function's `handler:` names, which the function runs in (its
    /// [`WORKDIR_ANNOTATION`]), or why it cannot be used.
    fn handler_dir(&self, handler: &str) -> Result<String, String>;

    /// The text of an `environment_file:`, or why it cannot be read.
    fn environment_file(&self, file: &str) -> Result<String, String>;
}

#[derive(Debug, Deserialize)]
pub struct Stack {
    #[serde(default)]
    pub version: Option<serde_yaml::Value>,
    #[serde(default)]
    pub provider: Option<StackProvider>,
    #[serde(default)]
    pub functions: BTreeMap<String, StackFunction>,
    /// Templates and build settings, for `faas-cli build`: nothing a deploy uses.
    #[serde(default)]
    pub configuration: Option<serde_yaml::Value>,
    /// Keys no version of the format has: reported, with the nearest known one.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_yaml::Value>,
}

const STACK_KEYS: &[&str] = &["version", "provider", "functions", "configuration"];

#[derive(Debug, Deserialize)]
pub struct StackProvider {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_yaml::Value>,
}

const PROVIDER_KEYS: &[&str] = &["name", "gateway"];

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
    /// Files of `environment:` maps, merged under the function's own `environment`.
    #[serde(default)]
    pub environment_file: Vec<String>,
    /// For `faas-cli build` and `publish` only; a deploy, faas-cli's too, does not read them.
    #[serde(default)]
    pub skip_build: Option<serde_yaml::Value>,
    #[serde(default)]
    pub build_options: Option<serde_yaml::Value>,
    #[serde(default)]
    pub build_args: Option<serde_yaml::Value>,
    #[serde(default)]
    pub build_secrets: Option<serde_yaml::Value>,
    #[serde(default)]
    pub platforms: Option<serde_yaml::Value>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_yaml::Value>,
}

const FUNCTION_KEYS: &[&str] = &[
    "image",
    "handler",
    "lang",
    "fprocess",
    "namespace",
    "environment",
    "environment_file",
    "labels",
    "annotations",
    "secrets",
    "constraints",
    "limits",
    "requests",
    "readonly_root_filesystem",
    "skip_build",
    "build_options",
    "build_args",
    "build_secrets",
    "platforms",
];

/// `unknown` keys as warnings, each with the known key nearest to it when one is near.
fn unknown_keys(
    what: &str,
    unknown: &BTreeMap<String, serde_yaml::Value>,
    known: &[&str],
) -> Vec<String> {
    unknown
        .keys()
        .map(|key| {
            let nearest = known
                .iter()
                .map(|k| (strsim::damerau_levenshtein(key, k), *k))
                .min()
                .filter(|(distance, k)| *distance <= (k.len() / 3).max(2));
            match nearest {
                Some((_, k)) => format!("{what}: unknown key {key:?} (did you mean {k:?}?)"),
                None => format!("{what}: unknown key {key:?} is ignored"),
            }
        })
        .collect()
}

/// YAML scalars (`max_inflight: 10`, `zero: true`) as the strings OpenFaaS's API carries.
fn scalar(key: &str, v: &serde_yaml::Value) -> Result<String, String> {
    Ok(match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Null => String::new(),
        _ => return Err(format!("{key} must be a string, number or boolean")),
    })
}

fn strings(map: &BTreeMap<String, serde_yaml::Value>) -> Result<BTreeMap<String, String>, String> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), scalar(k, v)?)))
        .collect()
}

impl Stack {
    /// Reads a stack file's text.
    pub fn parse(text: &str) -> Result<Self, StackError> {
        serde_yaml::from_str(text).map_err(|e| StackError::Invalid(e.to_string()))
    }

    /// What in the file is not read: keys that are not part of the format.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = unknown_keys("stack file", &self.unknown, STACK_KEYS);
        if let Some(p) = &self.provider {
            warnings.extend(unknown_keys("provider", &p.unknown, PROVIDER_KEYS));
        }
        for (name, f) in &self.functions {
            warnings.extend(unknown_keys(
                &format!("function {name}"),
                &f.unknown,
                FUNCTION_KEYS,
            ));
        }
        warnings
    }
}

impl StackFunction {
    /// The settings this function gives that functions run as local processes do not honour.
    pub fn unhonoured_locally(&self) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let set = |r: &Option<FunctionResources>, cpu: bool| {
            r.as_ref()
                .is_some_and(|r| !if cpu { &r.cpu } else { &r.memory }.trim().is_empty())
        };
        if set(&self.limits, true) {
            fields.push("limits.cpu");
        }
        if set(&self.requests, true) {
            fields.push("requests.cpu");
        }
        if set(&self.requests, false) {
            fields.push("requests.memory");
        }
        if self.readonly_root_filesystem {
            fields.push("readonly_root_filesystem");
        }
        if !self.constraints.is_empty() {
            fields.push("constraints");
        }
        fields
    }

    /// The function's `environment_file`s, merged in order (a later file wins).
    fn file_environment(&self, paths: &dyn StackPaths) -> Result<BTreeMap<String, String>, String> {
        #[derive(Deserialize)]
        struct EnvironmentFile {
            #[serde(default)]
            environment: BTreeMap<String, serde_yaml::Value>,
        }
        let mut merged = BTreeMap::new();
        for file in &self.environment_file {
            let shown = paths.shown(file);
            let text = paths
                .environment_file(file)
                .map_err(|e| format!("cannot read environment_file {shown}: {e}"))?;
            let parsed: EnvironmentFile = serde_yaml::from_str(&text).map_err(|e| {
                format!("environment_file {shown} is not a YAML file with an environment: map: {e}")
            })?;
            merged.extend(strings(&parsed.environment)?);
        }
        Ok(merged)
    }

    /// The deployment for function `name`; `paths` says where its handler directory and
    /// environment files are.
    pub fn deployment(
        &self,
        name: &str,
        paths: &dyn StackPaths,
    ) -> Result<FunctionDeployment, StackError> {
        let ctx =
            |e: String| StackError::Function(format!("function {name} in the stack file: {e}"));
        let mut annotations = self
            .annotations
            .as_ref()
            .map(strings)
            .transpose()
            .map_err(ctx)?;
        if let Some(lang) = &self.lang {
            if self.handler.is_none() {
                return Err(StackError::Function(format!(
                    "function {name} names lang {lang:?} but no handler: directory"
                )));
            }
            annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(LANG_ANNOTATION.to_owned(), lang.clone());
        }
        if let Some(handler) = &self.handler {
            let dir = paths.handler_dir(handler).map_err(|e| {
                StackError::Function(format!(
                    "handler directory {} of function {name}: {e}",
                    paths.shown(handler)
                ))
            })?;
            annotations
                .get_or_insert_with(BTreeMap::new)
                .entry(WORKDIR_ANNOTATION.to_owned())
                .or_insert(dir);
        }
        Ok(FunctionDeployment {
            service: name.to_owned(),
            image: self.image.clone().unwrap_or_default(),
            namespace: self.namespace.clone(),
            env_process: self.fprocess.clone(),
            env_vars: {
                // The function's own environment wins over its files', as in faas-cli.
                let mut env = self.file_environment(paths).map_err(ctx)?;
                env.extend(strings(&self.environment).map_err(ctx)?);
                env
            },
            constraints: self.constraints.clone(),
            secrets: self.secrets.clone(),
            labels: Some(
                self.labels
                    .as_ref()
                    .map(strings)
                    .transpose()
                    .map_err(ctx)?
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

    /// Paths for stacks that name none: any use of one is a test failure.
    struct NoPaths;

    impl StackPaths for NoPaths {
        fn shown(&self, path: &str) -> String {
            path.to_owned()
        }
        fn handler_dir(&self, handler: &str) -> Result<String, String> {
            Err(format!("no handler directory here ({handler})"))
        }
        fn environment_file(&self, file: &str) -> Result<String, String> {
            Err(format!("no file here ({file})"))
        }
    }

    /// Paths under `/srv/stack`, with one environment file.
    struct Srv;

    impl StackPaths for Srv {
        fn shown(&self, path: &str) -> String {
            format!("/srv/stack/{path}")
        }
        fn handler_dir(&self, handler: &str) -> Result<String, String> {
            Ok(format!("/srv/stack/{}", handler.trim_start_matches("./")))
        }
        fn environment_file(&self, file: &str) -> Result<String, String> {
            match file {
                "env.yml" => Ok("environment:\n  shared: file\n  only_file: 1\n".into()),
                _ => Err("No such file or directory (os error 2)".into()),
            }
        }
    }

    #[test]
    fn handler_directories_and_environment_files_come_from_the_paths() {
        let stack = Stack::parse(
            "functions:\n  f:\n    lang: python3-http\n    handler: ./f\n    \
             environment_file: [env.yml]\n    environment:\n      shared: own\n  \
             g:\n    fprocess: cat\n    environment_file: [gone.yml]\n  \
             h:\n    fprocess: cat\n    handler: ./h\n    annotations:\n      \
             com.sluice.workdir: /elsewhere\n",
        )
        .unwrap();
        let f = stack.functions["f"].deployment("f", &Srv).unwrap();
        assert_eq!(f.annotation(WORKDIR_ANNOTATION), Some("/srv/stack/f"));
        assert_eq!(f.annotation(LANG_ANNOTATION), Some("python3-http"));
        assert_eq!(f.env_vars["shared"], "own");
        assert_eq!(f.env_vars["only_file"], "1");
        let g = stack.functions["g"].deployment("g", &Srv).unwrap_err();
        assert_eq!(
            g.to_string(),
            "function g in the stack file: cannot read environment_file /srv/stack/gone.yml: \
             No such file or directory (os error 2)"
        );
        // A workdir annotation given outright wins over the handler's.
        let h = stack.functions["h"].deployment("h", &Srv).unwrap();
        assert_eq!(h.annotation(WORKDIR_ANNOTATION), Some("/elsewhere"));
        let refused = stack.functions["h"].deployment("h", &NoPaths).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "handler directory ./h of function h: no handler directory here (./h)"
        );
    }

    #[test]
    fn what_is_not_a_stack_file_or_a_deployment_is_said() {
        let e = Stack::parse("functions: [a, b]").unwrap_err();
        assert!(matches!(e, StackError::Invalid(_)), "{e:?}");
        let stack = Stack::parse(
            "functions:\n  f:\n    lang: node20\n  g:\n    fprocess: cat\n    labels:\n      \
             a: [1, 2]\n",
        )
        .unwrap();
        assert_eq!(
            stack.functions["f"].deployment("f", &NoPaths).unwrap_err(),
            StackError::Function(
                "function f names lang \"node20\" but no handler: directory".into()
            )
        );
        assert_eq!(
            stack.functions["g"]
                .deployment("g", &NoPaths)
                .unwrap_err()
                .to_string(),
            "function g in the stack file: a must be a string, number or boolean"
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_the_nearest_known_one() {
        let stack = Stack::parse(
            "version: 1.0\nprovder:\n  name: openfaas\nprovider:\n  gatewy: x\n\
             functions:\n  f:\n    enviroment:\n      a: b\n    secret: [s]\n    \
             readonly_root_filesytem: true\n    colour: red\n    skip_build: true\n",
        )
        .unwrap();
        assert_eq!(
            stack.warnings(),
            [
                r#"stack file: unknown key "provder" (did you mean "provider"?)"#,
                r#"provider: unknown key "gatewy" (did you mean "gateway"?)"#,
                r#"function f: unknown key "colour" is ignored"#,
                r#"function f: unknown key "enviroment" (did you mean "environment"?)"#,
                r#"function f: unknown key "readonly_root_filesytem" (did you mean "readonly_root_filesystem"?)"#,
                r#"function f: unknown key "secret" (did you mean "secrets"?)"#,
            ]
        );
        let sample = Stack::parse(include_str!("../../functions/stack.yml")).unwrap();
        assert!(sample.warnings().is_empty());
    }

    #[test]
    fn what_local_processes_cannot_honour_is_named() {
        let stack = Stack::parse(
            "functions:\n  f:\n    limits:\n      memory: 128Mi\n      cpu: 100m\n    \
             requests:\n      memory: 64Mi\n    readonly_root_filesystem: true\n  \
             g:\n    limits:\n      memory: 128Mi\n",
        )
        .unwrap();
        assert_eq!(
            stack.functions["f"].unhonoured_locally(),
            ["limits.cpu", "requests.memory", "readonly_root_filesystem"]
        );
        assert!(stack.functions["g"].unhonoured_locally().is_empty());
    }

    #[test]
    fn fprocess_in_the_environment_is_sent_as_faas_cli_sends_it() {
        // faas-cli sends `environment` as envVars and `fprocess` alone as envProcess; the
        // provider takes envVars.fprocess when envProcess is empty.
        let yaml = "functions:\n  f:\n    environment:\n      fprocess: wc -c\n";
        let d = Stack::parse(yaml).unwrap().functions["f"]
            .deployment("f", &NoPaths)
            .unwrap();
        assert_eq!(d.env_process, None);
        assert_eq!(d.env_vars["fprocess"], "wc -c");
    }

    #[test]
    fn scalars_become_strings() {
        let yaml = "functions:\n  f:\n    fprocess: cat\n    environment:\n      max_inflight: 10\n      debug: true\n";
        let stack = Stack::parse(yaml).unwrap();
        let d = stack.functions["f"].deployment("f", &NoPaths).unwrap();
        assert_eq!(d.env_vars["max_inflight"], "10");
        assert_eq!(d.env_vars["debug"], "true");
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
                    let _ = f.deployment(name, &Srv);
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
                let d = stack.functions[name].deployment(name, &NoPaths).unwrap();
                proptest::prop_assert_eq!(&d.service, name);
                proptest::prop_assert_eq!(d.env_process.as_deref(), Some(process.trim()));
                for (k, v) in env {
                    proptest::prop_assert_eq!(&d.env_vars[k], v.trim_matches('\''));
                }
            }
        }
    }
}
