//! The Helm chart's tests and the manifest validator, run with the workspace's tests. Both are
//! Python (`charts/sluice/tests/test_chart.py`, `tests/k8s/validate.py`) on Helm's own library and
//! the Kubernetes API schemas; `.ci/run` installs what they need
//! (`charts/sluice/tests/requirements.txt`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

fn report(what: &str, output: &Output) -> String {
    format!(
        "{what} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `tests/k8s/validate.py -` on `manifest`.
fn validate(manifest: &str) -> Output {
    let mut child = Command::new("python3")
        .arg(repo_root().join("tests/k8s/validate.py"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts (the manifest validator needs it; .ci/run installs it)");
    // The pipe closes at the end of this statement, so the validator sees the end of its input.
    let written = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(manifest.as_bytes());
    let output = child
        .wait_with_output()
        .expect("the validator's output is read");
    if let Err(error) = written {
        // It stopped reading early (a missing package, say): its own message says why.
        panic!(
            "cannot write to validate.py's stdin ({error}): {}",
            report("validate.py", &output)
        );
    }
    output
}

#[test]
fn helm_chart_renders_valid_least_privilege_manifests() {
    let script = repo_root().join("charts/sluice/tests/test_chart.py");
    let output = Command::new("python3")
        .arg(&script)
        .current_dir(repo_root())
        .output()
        .expect("python3 runs (the chart tests need it; .ci/run installs it)");
    assert!(
        output.status.success(),
        "{}",
        report(&script.display().to_string(), &output)
    );
}

#[test]
fn manifest_validator_tells_valid_from_invalid() {
    let valid = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
                    "spec": {"ports": [{"port": 8080}]}}"#;
    let output = validate(valid);
    assert!(
        output.status.success(),
        "{}",
        report("validate.py on a valid Service", &output)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok Service/echo"));

    let invalid = valid.replace("8080", r#""eighty""#);
    let output = validate(&invalid);
    assert!(
        !output.status.success(),
        "{}",
        report("validate.py on an invalid Service", &output)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("spec/ports/0/port"));
}
