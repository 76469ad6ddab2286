//! What Sluice hands Kubernetes, checked against Kubernetes' own schemas: the Helm chart
//! (`charts/sluice/tests/test_chart.py`, on Helm's own library) and the Deployments and Services
//! the Kubernetes provider makes of the sample functions (`tests/k8s/validate.py`, on
//! `kubernetes-validate`). Both are Python; `.ci/run` installs what they need
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

/// Every function of `functions/stack.yml`, deployed as the CLI deploys it, and again with the
/// options the samples leave out (secrets, limits, a read-only root filesystem), becomes a
/// Deployment and a Service that Kubernetes' schemas accept.
#[tokio::test]
async fn the_sample_functions_become_valid_kubernetes_objects() {
    use sluice_core::{FunctionRef, FunctionResources, FunctionSpec, Orchestrator, Timestamp};
    use sluice_kube::objects::{self, SecretMount};

    let (service, _api) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let provider = sluice_kube::KubeProvider::new(
        kube::Client::new(service, "openfaas-fn"),
        sluice_kube::KubeConfig::default(),
    );
    let dir = repo_root().join("functions");
    let stack = sluice_cli::stack::load(&dir.join("stack.yml")).expect("the sample stack");
    let mut manifests = Vec::new();
    let names: Vec<&String> = stack.functions.keys().collect();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        let deployment = sluice_cli::stack::deployment(&stack.functions[name], name, &dir)
            .expect("the stack's function");
        let function = FunctionRef::parse(name, Some("openfaas-fn")).unwrap();
        let plain = FunctionSpec::new(function.clone(), deployment.clone(), 1, Timestamp::now())
            .expect("a valid function");
        let mut full = deployment;
        full.secrets = vec!["api-key".into(), "registry".into()];
        full.read_only_root_filesystem = true;
        full.limits = Some(FunctionResources {
            memory: "128Mi".into(),
            cpu: "500m".into(),
        });
        full.requests = Some(FunctionResources {
            memory: "64Mi".into(),
            cpu: "100m".into(),
        });
        let full = FunctionSpec::new(function, full, 3, Timestamp::now()).unwrap();
        let secrets = [
            SecretMount {
                name: "api-key".into(),
                keys: vec!["api-key".into()],
                pull: false,
            },
            SecretMount {
                name: "registry".into(),
                keys: vec![".dockerconfigjson".into()],
                pull: true,
            },
        ];
        // The full one runs as a set user (the restricted Pod Security Standard).
        let user = objects::PodOptions {
            run_as_user: Some(12000),
        };
        for (spec, secrets, pods) in [
            (&plain, &secrets[..0], objects::PodOptions::default()),
            (&full, &secrets[..], user),
        ] {
            provider.validate(spec).expect("the provider takes it");
            let deployment = objects::deployment_with(spec, secrets, spec.replicas, &pods);
            manifests.push(serde_json::to_value(deployment).unwrap());
            manifests.push(serde_json::to_value(objects::service(spec)).unwrap());
        }
    }
    let output = validate(&serde_json::to_string(&manifests).unwrap());
    assert!(
        output.status.success(),
        "{}",
        report("validate.py on the sample functions' objects", &output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        manifests.len(),
        "{stdout}"
    );
}

/// Every way the chart runs `sluice` (defaults and production values) parses with the real
/// command line: no flag the binary lacks, no required one left unset (a flag read from the
/// environment counts as set when the container's environment names its variable).
#[test]
fn the_chart_runs_sluice_with_flags_it_takes() {
    use clap::{CommandFactory, Parser};

    let output = Command::new("python3")
        .arg(repo_root().join("charts/sluice/tests/commands.py"))
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        report("commands.py", &output)
    );
    let containers: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("commands.py prints JSON");
    let mut seen = std::collections::BTreeSet::new();
    for c in &containers {
        let object = c["object"].as_str().unwrap();
        let mut argv: Vec<String> = c["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        let subcommand = argv[1].clone();
        seen.insert(subcommand.clone());
        let cli = sluice_cli::Cli::command();
        let sub = cli
            .find_subcommand(&subcommand)
            .unwrap_or_else(|| panic!("{object}: sluice has no subcommand {subcommand:?}"));
        // What the container's environment sets, given as the flags it stands for.
        for arg in sub.get_arguments() {
            let (Some(long), Some(var)) = (arg.get_long(), arg.get_env()) else {
                continue;
            };
            let given = argv
                .iter()
                .any(|a| a == &format!("--{long}") || a.starts_with(&format!("--{long}=")));
            if !given && env.iter().any(|e| std::ffi::OsStr::new(e) == var) {
                // A value of the right shape: the flag's default, else a sample.
                let default = arg
                    .get_default_values()
                    .first()
                    .map(|v| v.to_string_lossy().into_owned());
                let placeholder = default.unwrap_or_else(|| {
                    match long {
                        "database-url" => "postgres://sluice@db/sluice",
                        "nats" => "nats://nats:4222",
                        "internal-token" => "an-internal-token-of-32-characters",
                        "callback-signing-key" => "a-signing-key-of-32-characters!!",
                        _ => "placeholder",
                    }
                    .to_owned()
                });
                argv.push(format!("--{long}={placeholder}"));
            }
        }
        if let Err(error) = sluice_cli::Cli::try_parse_from(&argv) {
            panic!("{object}: sluice refuses the chart's command line {argv:?}:\n{error}");
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["autoscaler", "gateway", "queue-worker"]
    );
}
