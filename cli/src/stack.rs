//! OpenFaaS's `stack.yml`, as `faas-cli deploy -f` reads it: the file, and the files it names
//! relative to its own directory. Reading its text into deployments is `sluice_core::stack`'s
//! (the portal reads pasted ones too).

use std::path::Path;

use anyhow::Context;
pub use sluice_core::stack::{Stack, StackError, StackFunction, StackPaths, StackProvider};

/// Reads the stack file at `path`.
pub fn load(path: &Path) -> anyhow::Result<Stack> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Stack::parse(&text).with_context(|| format!("{} is not a valid stack file", path.display()))
}

/// A stack file's directory, which its relative `handler:` and `environment_file:` paths are
/// read from: a handler directory becomes the absolute path it is on this machine.
#[derive(Debug, Clone, Copy)]
pub struct StackDir<'a>(pub &'a Path);

impl StackPaths for StackDir<'_> {
    fn shown(&self, path: &str) -> String {
        self.0.join(path).display().to_string()
    }

    fn handler_dir(&self, handler: &str) -> Result<String, String> {
        self.0
            .join(handler)
            .canonicalize()
            .map(|dir| dir.display().to_string())
            .map_err(|e| e.to_string())
    }

    fn environment_file(&self, file: &str) -> Result<String, String> {
        std::fs::read_to_string(self.0.join(file)).map_err(|e| e.to_string())
    }
}

/// The deployment for function `name` of a stack file in `stack_dir`.
pub fn deployment(
    function: &StackFunction,
    name: &str,
    stack_dir: &Path,
) -> anyhow::Result<sluice_core::FunctionDeployment> {
    Ok(function.deployment(name, &StackDir(stack_dir))?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sluice_core::config::WORKDIR_ANNOTATION;

    use super::*;

    #[test]
    fn the_sample_stack_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions");
        let stack = load(&dir.join("stack.yml")).unwrap();
        assert_eq!(
            stack.provider.unwrap().gateway.as_deref(),
            Some("http://127.0.0.1:8080")
        );
        let echo = deployment(&stack.functions["echo"], "echo", &dir).unwrap();
        assert_eq!(echo.env_vars["mode"], "http");
        let workdir = echo.annotation(WORKDIR_ANNOTATION).unwrap();
        assert!(Path::new(workdir).join("echo.py").is_file());
        let sleep = deployment(&stack.functions["sleep"], "sleep", &dir).unwrap();
        assert_eq!(sleep.label("com.openfaas.scale.min"), Some("2"));
        assert!(load(&dir.join("stack.yml")).unwrap().warnings().is_empty());
    }

    #[test]
    fn environment_files_are_merged_under_the_functions_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "environment:\n  shared: a\n  only_a: 1\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yml"), "environment:\n  shared: b\n").unwrap();
        let stack = Stack::parse(
            "functions:\n  f:\n    fprocess: cat\n    environment_file: [a.yml, b.yml]\n    \
             environment:\n      own: x\n  g:\n    fprocess: cat\n    environment_file: [gone.yml]\n",
        )
        .unwrap();
        let d = deployment(&stack.functions["f"], "f", dir.path()).unwrap();
        assert_eq!(
            d.env_vars,
            BTreeMap::from([
                ("only_a".to_owned(), "1".to_owned()),
                ("own".to_owned(), "x".to_owned()),
                ("shared".to_owned(), "b".to_owned()),
            ])
        );
        let err = deployment(&stack.functions["g"], "g", dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("gone.yml"), "{err:#}");
    }

    #[test]
    fn a_handler_directory_is_made_absolute_or_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("h")).unwrap();
        let stack = Stack::parse(
            "functions:\n  f:\n    fprocess: cat\n    handler: ./h/../h\n  \
             g:\n    fprocess: cat\n    handler: ./gone\n",
        )
        .unwrap();
        let d = deployment(&stack.functions["f"], "f", dir.path()).unwrap();
        let expected = dir.path().join("h").canonicalize().unwrap();
        assert_eq!(
            d.annotation(WORKDIR_ANNOTATION),
            Some(expected.display().to_string().as_str())
        );
        let err = deployment(&stack.functions["g"], "g", dir.path()).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "handler directory {} of function g: No such file or directory (os error 2)",
                dir.path().join("./gone").display()
            )
        );
    }
}
