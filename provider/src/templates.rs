//! OpenFaaS templates (`lang:` in stack.yml) run as local processes: a function that names one
//! (annotation `com.sluice.lang`) and no command runs Sluice's runner for it, a small server
//! that loads the function's handler from its handler directory as the template's own server
//! does (`provider/templates/`), in HTTP mode.

use std::path::{Path, PathBuf};

use sluice_core::config::{LANG_ANNOTATION, Mode};
use sluice_core::{FunctionSpec, ProviderError};

use crate::spec::WORKDIR_ANNOTATION;

/// A template this provider can run.
#[derive(Debug)]
struct Template {
    /// The names stack files give it (`lang:`).
    names: &'static [&'static str],
    /// The interpreter that runs the runner, looked up on the `PATH`, and its flags.
    program: &'static str,
    flags: &'static [&'static str],
    /// Other programs the runner uses, which must be on the `PATH` too.
    needs: &'static [&'static str],
    /// What to install when one is missing (for the error).
    install: &'static str,
    /// The runner's file name under the templates directory, and its source.
    file: &'static str,
    source: &'static str,
}

const TEMPLATES: &[Template] = &[
    Template {
        names: &["python3-http", "python3-http-debian"],
        program: "python3",
        flags: &["-u"],
        needs: &[],
        install: "Python 3 (with its venv module, Debian's python3-venv)",
        file: "python3-http.py",
        source: include_str!("../templates/python3-http.py"),
    },
    Template {
        names: &["node18", "node20", "node22"],
        program: "node",
        flags: &[],
        needs: &["flock", "prlimit"],
        install: "Node.js (and npm, for handlers with dependencies), with flock and prlimit \
                  (util-linux)",
        file: "node.js",
        source: include_str!("../templates/node.js"),
    },
    Template {
        names: &["golang-middleware"],
        program: "sh",
        flags: &[],
        needs: &["go", "flock", "sha256sum"],
        install: "Go (the go command; any version that builds the handler), with flock and \
                  sha256sum (util-linux, coreutils)",
        file: "golang-middleware.sh",
        source: include_str!("../templates/golang-middleware.sh"),
    },
];

/// The `lang:` names this provider runs, for errors and `--help`.
pub fn names() -> Vec<&'static str> {
    TEMPLATES
        .iter()
        .flat_map(|t| t.names.iter().copied())
        .collect()
}

fn invalid(msg: String) -> ProviderError {
    ProviderError::InvalidSpec(msg)
}

/// Where the runners are written, and Python handlers' virtual environments and Go handlers'
/// builds kept.
#[derive(Debug)]
pub(crate) struct TemplateDirs {
    runners: PathBuf,
    venvs: PathBuf,
    builds: PathBuf,
    written: std::sync::OnceLock<()>,
}

impl TemplateDirs {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            runners: root.join("templates"),
            venvs: root.join("venvs"),
            builds: root.join("builds"),
            written: std::sync::OnceLock::new(),
        }
    }

    /// Writes this build's runners (once per provider: a newer Sluice replaces older ones; a
    /// failed write is tried again at the next deploy).
    fn write_runners(&self) -> Result<(), ProviderError> {
        if self.written.get().is_some() {
            return Ok(());
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.runners)
            .and_then(|()| {
                TEMPLATES
                    .iter()
                    .try_for_each(|t| std::fs::write(self.runners.join(t.file), t.source))
            })
            .map_err(|e| {
                ProviderError::Internal(format!(
                    "cannot write the templates' runners to {}: {e}",
                    self.runners.display()
                ))
            })?;
        let _ = self.written.set(());
        Ok(())
    }

    /// `spec` as it runs here: for a function that names a template, with the template's
    /// runner as its command; any other function as it is.
    pub(crate) fn expand(
        &self,
        spec: &FunctionSpec,
    ) -> Result<Option<FunctionSpec>, ProviderError> {
        let d = &spec.deployment;
        let Some(lang) = d.annotation(LANG_ANNOTATION) else {
            return Ok(None);
        };
        let template = TEMPLATES
            .iter()
            .find(|t| t.names.contains(&lang))
            .ok_or_else(|| {
                invalid(format!(
                    "lang {lang:?} has no local runner; Sluice runs these templates as local \
                     processes: {} (or give the function an fprocess)",
                    names().join(", ")
                ))
            })?;
        if d.env_process
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty())
            || d.env_vars
                .get("fprocess")
                .is_some_and(|p| !p.trim().is_empty())
        {
            return Err(invalid(format!(
                "function {} names both lang {lang:?} and a command (fprocess): give one",
                spec.function
            )));
        }
        if spec.config.mode != Mode::Http {
            return Err(invalid(format!(
                "lang {lang:?} runs the template's server: leave envVars.mode unset (or http)"
            )));
        }
        if d.annotation(WORKDIR_ANNOTATION).is_none() {
            return Err(invalid(format!(
                "lang {lang:?} needs the function's handler directory (annotation \
                 {WORKDIR_ANNOTATION}, which `sluice deploy` sets from stack.yml's handler:)"
            )));
        }
        if let Some(missing) = std::iter::once(&template.program)
            .chain(template.needs)
            .find(|p| which(p).is_none())
        {
            return Err(invalid(format!(
                "lang {lang:?} needs {} on the Sluice host: {missing} was not found on its PATH",
                template.install
            )));
        }
        self.write_runners()?;
        let runner = self.runners.join(template.file);
        let mut expanded = spec.clone();
        let runner = runner.to_string_lossy();
        let argv = std::iter::once(template.program)
            .chain(template.flags.iter().copied())
            .chain(std::iter::once(&*runner));
        let command = shlex::try_join(argv)
            .map_err(|e| ProviderError::Internal(format!("runner path: {e}")))?;
        let d = &mut expanded.deployment;
        d.env_process = Some(command);
        d.env_vars.remove("fprocess");
        d.env_vars.insert("SLUICE_LANG".to_owned(), lang.to_owned());
        d.env_vars.insert(
            "SLUICE_VENV_DIR".to_owned(),
            self.venvs.to_string_lossy().into_owned(),
        );
        d.env_vars.insert(
            "SLUICE_BUILD_DIR".to_owned(),
            self.builds.to_string_lossy().into_owned(),
        );
        // The runner sets limits.memory itself once its install or build is done: they are
        // not held to it.
        if let Some(limit) = std::sync::Arc::make_mut(&mut expanded.config)
            .memory_limit
            .take()
        {
            d.env_vars
                .insert("SLUICE_MEMORY_LIMIT".to_owned(), limit.to_string());
        }
        Ok(Some(expanded))
    }
}

/// The first executable file named `program` in an absolute directory of Sluice's `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{FunctionDeployment, FunctionRef, Timestamp};

    fn spec(lang: &str, fprocess: Option<&str>, workdir: bool) -> FunctionSpec {
        let mut annotations =
            std::collections::BTreeMap::from([(LANG_ANNOTATION.to_owned(), lang.to_owned())]);
        if workdir {
            annotations.insert(WORKDIR_ANNOTATION.to_owned(), "/tmp".to_owned());
        }
        let d = FunctionDeployment {
            service: "f".into(),
            env_process: fprocess.map(Into::into),
            annotations: Some(annotations),
            ..Default::default()
        };
        FunctionSpec::new(
            FunctionRef::parse("f", None).unwrap(),
            d,
            1,
            Timestamp::now(),
        )
        .unwrap()
    }

    #[test]
    fn templates_become_their_runner_in_http_mode_or_are_refused_plainly() {
        let root = tempfile::tempdir().unwrap();
        let dirs = TemplateDirs::new(root.path());
        let s = spec("python3-http", None, true);
        assert_eq!(s.config.mode, Mode::Http);
        let expanded = dirs.expand(&s).unwrap().unwrap();
        let command = expanded.deployment.env_process.unwrap();
        assert!(command.starts_with("python3 -u "), "{command}");
        let runner = root.path().join("templates/python3-http.py");
        assert!(command.ends_with(&*runner.to_string_lossy()), "{command}");
        assert_eq!(
            std::fs::read_to_string(&runner).unwrap(),
            TEMPLATES[0].source
        );
        assert_eq!(expanded.deployment.env_vars["SLUICE_LANG"], "python3-http");
        // Not a template: left alone.
        let mut plain = s.clone();
        plain.deployment.annotations = None;
        assert!(dirs.expand(&plain).unwrap().is_none());
        for (s, needle) in [
            (
                spec("ruby", None, true),
                "python3-http, python3-http-debian, node18",
            ),
            (spec("node20", Some("node x.js"), true), "give one"),
            (spec("node20", None, false), "handler directory"),
        ] {
            let err = dirs.expand(&s).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        assert!(which("sh").is_some());
        assert!(which("no-such-program-sluice").is_none());
    }

    /// The python3-http runner answers a body it will not read with its status and closes the
    /// connection: the unread bytes are never taken as another request.
    #[test]
    fn a_body_the_python_runner_refuses_ends_its_connection() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("handler.py"),
            "def handle(event, context):\n    return {'statusCode': 200, 'body': 'ran'}\n",
        )
        .unwrap();
        let runner = dir.path().join("runner.py");
        std::fs::write(&runner, TEMPLATES[0].source).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("python3")
            .arg(&runner)
            .current_dir(dir.path())
            .env("PORT", port.to_string())
            .env("SLUICE_MAX_BODY_BYTES", "10")
            .spawn()
            .unwrap();
        let deadline = std::time::Duration::from_secs(20);
        let mut waited = std::time::Duration::ZERO;
        let mut conn = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(c) => break c,
                // Polled until it listens, within the deadline.
                Err(_) if waited < deadline => {
                    let step = std::time::Duration::from_millis(20);
                    std::thread::sleep(step);
                    waited += step;
                }
                Err(e) => panic!("the runner never listened: {e}"),
            }
        };
        let smuggled = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        write!(
            conn,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .unwrap();
        conn.set_read_timeout(Some(deadline)).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert!(!answer.contains("ran"), "{answer}");
    }
}
