//! `sluice new <name> --lang <lang>`: a new function from a template (handler, its own test, and
//! its entry in `./stack.yml`, appended when the file exists), ready for `sluice deploy`.

use std::path::Path;

use anyhow::Context;
use clap::Args;

use crate::stack::Stack;

/// One file of a template: its path under the function's directory, and its text, in which
/// `{{name}}` stands for the function's name.
type File = (&'static str, &'static str);

#[derive(Debug)]
struct Template {
    lang: &'static str,
    about: &'static str,
    /// How to run the template's own test, in the function's directory.
    test: &'static str,
    files: &'static [File],
    /// The function's entry under `functions:` in stack.yml.
    stack: &'static str,
}

macro_rules! template_file {
    ($lang:literal, $path:literal) => {
        (
            $path,
            include_str!(concat!("../templates/", $lang, "/", $path)),
        )
    };
}

const TEMPLATES: &[Template] = &[
    Template {
        lang: "python",
        about: "Python 3: handle(event, context) in handler.py, OpenFaaS's python3-http",
        test: "python3 -m unittest handler_test",
        files: &[
            template_file!("python", "handler.py"),
            template_file!("python", "handler_test.py"),
            template_file!("python", "requirements.txt"),
        ],
        stack: include_str!("../templates/python/stack.yml"),
    },
    Template {
        lang: "node",
        about: "Node.js: module.exports = async (event, context) in handler.js, OpenFaaS's node20",
        test: "npm test",
        files: &[
            template_file!("node", "handler.js"),
            template_file!("node", "handler.test.js"),
            template_file!("node", "package.json"),
        ],
        stack: include_str!("../templates/node/stack.yml"),
    },
    Template {
        lang: "go",
        about: "Go: Handle(w, r) in handler.go, an HTTP server built with go run",
        test: "go test",
        files: &[
            template_file!("go", "go.mod"),
            template_file!("go", "handler.go"),
            template_file!("go", "main.go"),
            template_file!("go", "handler_test.go"),
        ],
        stack: include_str!("../templates/go/stack.yml"),
    },
    Template {
        lang: "rust",
        about: "Rust: handle(body) in src/main.rs, a classic function built with cargo",
        test: "cargo test",
        files: &[
            template_file!("rust", "Cargo.toml"),
            template_file!("rust", "src/main.rs"),
            (".gitignore", include_str!("../templates/rust/gitignore")),
        ],
        stack: include_str!("../templates/rust/stack.yml"),
    },
    Template {
        lang: "shell",
        about: "POSIX shell: handler.sh run per request, body on stdin",
        test: "sh handler_test.sh",
        files: &[
            template_file!("shell", "handler.sh"),
            template_file!("shell", "handler_test.sh"),
        ],
        stack: include_str!("../templates/shell/stack.yml"),
    },
];

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The function's name (a DNS label: lower-case letters, digits and '-').
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// The template: python, node, go, rust or shell.
    #[arg(long, required_unless_present = "list")]
    pub lang: Option<String>,
    /// List the templates.
    #[arg(long)]
    pub list: bool,
}

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    if args.list {
        for t in TEMPLATES {
            println!("{:<8} {}", t.lang, t.about);
        }
        return Ok(());
    }
    let (Some(name), Some(lang)) = (args.name, args.lang) else {
        anyhow::bail!("give a name and --lang (or --list)");
    };
    let made = create(Path::new("."), &name, &lang)?;
    match &made.entry_to_add {
        None => println!("Made {name}/ and its entry in stack.yml."),
        Some(entry) => {
            println!("Made {name}/.");
            eprintln!(
                "warning: stack.yml's functions: is not its last part, so {name} was not \
                 added to it; add this under functions: yourself:\n{entry}"
            );
        }
    }
    println!("Test it:   cd {name} && {}", made.test);
    println!("Deploy it: sluice deploy && echo hi | sluice invoke {name}");
    Ok(())
}

/// What [`create`] made.
#[derive(Debug)]
pub struct Made {
    pub test: &'static str,
    /// The function's stack.yml entry, when it could not be added to the file there.
    pub entry_to_add: Option<String>,
}

/// Writes function `name` from template `lang` into `dir/<name>/`, and its entry into
/// `dir/stack.yml` (made if missing). Nothing is written if anything is in the way.
pub fn create(dir: &Path, name: &str, lang: &str) -> anyhow::Result<Made> {
    sluice_core::name::validate_label("function name", name)?;
    let template = TEMPLATES.iter().find(|t| t.lang == lang).ok_or_else(|| {
        anyhow::anyhow!(
            "there is no template {lang:?}; there are: {}",
            TEMPLATES
                .iter()
                .map(|t| t.lang)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let function_dir = dir.join(name);
    anyhow::ensure!(
        !function_dir.exists(),
        "{} exists already; choose another name or remove it",
        function_dir.display()
    );
    let fill = |text: &str| text.replace("{{name}}", name);
    let stack_path = dir.join("stack.yml");
    let entry = fill(template.stack);
    let stack_text = match std::fs::read_to_string(&stack_path) {
        Ok(existing) => {
            let stack = Stack::parse(&existing)
                .with_context(|| format!("{} is not a valid stack file", stack_path.display()))?;
            anyhow::ensure!(
                !stack.functions.contains_key(name),
                "{} has a function {name} already",
                stack_path.display()
            );
            // Appended as text, so the file's comments and layout stay; it must then read as
            // the same stack with one function more (functions: must be the file's last key).
            let mut text = existing.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            if stack.functions.is_empty() && !text.lines().any(|l| l.starts_with("functions:")) {
                text.push_str("functions:\n");
            }
            text.push_str(&entry);
            let appended = Stack::parse(&text).ok();
            let fits = appended.as_ref().is_some_and(|s| {
                s.functions.contains_key(name) && s.functions.len() == stack.functions.len() + 1
            });
            // Rewriting the file would lose its comments and layout: the user adds it.
            fits.then_some(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:8080\nfunctions:\n{entry}"
        )),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", stack_path.display())),
    };
    for (path, text) in template.files {
        let path = function_dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, fill(text))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let entry_to_add = match stack_text {
        Some(text) => {
            std::fs::write(&stack_path, text)
                .with_context(|| format!("cannot write {}", stack_path.display()))?;
            None
        }
        None => Some(entry),
    };
    Ok(Made {
        test: template.test,
        entry_to_add,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_added_to_a_stack_file_that_exists_and_to_none_twice() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), "one", "python").unwrap();
        let handler = std::fs::read_to_string(dir.path().join("one/handler.py")).unwrap();
        assert!(handler.starts_with("# one: "), "{handler}");
        create(dir.path(), "two", "shell").unwrap();
        let stack = crate::stack::load(&dir.path().join("stack.yml")).unwrap();
        assert_eq!(stack.functions.len(), 2);
        assert_eq!(stack.functions["one"].lang.as_deref(), Some("python3-http"));
        assert_eq!(
            stack.functions["two"].fprocess.as_deref(),
            Some("sh handler.sh")
        );
        assert!(stack.warnings().is_empty(), "{:?}", stack.warnings());
        for (name, lang, needle) in [
            ("two", "node", "exists already"),
            ("three", "cobol", "python, node, go, rust, shell"),
            ("Bad_Name", "python", "function name"),
        ] {
            let err = create(dir.path(), name, lang).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(!dir.path().join("three").exists());
        // A stack file whose functions: is not last: the function is made, the file left as it
        // was, and the entry given to add by hand.
        let odd = "functions:\n  a:\n    fprocess: cat\nprovider:\n  name: openfaas\n";
        std::fs::write(dir.path().join("stack.yml"), odd).unwrap();
        let made = create(dir.path(), "four", "go").unwrap();
        assert!(
            made.entry_to_add
                .unwrap()
                .starts_with("  four:\n    handler: ./four")
        );
        assert!(dir.path().join("four/handler.go").is_file());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stack.yml")).unwrap(),
            odd
        );
    }
}
