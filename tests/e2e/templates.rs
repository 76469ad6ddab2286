//! OpenFaaS templates as local processes: a stack.yml written for OpenFaaS, with `lang:` and
//! handler files only (python3-http with a requirements.txt, node20, golang-middleware), deploys
//! with `sluice deploy` and answers as the templates' own servers do; and `sluice new`'s
//! templates, each with its own test.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Sluice, cli, eventually, http, printed};

/// `sluice deploy -f <stack>` as the test admin; returns (success, stdout + stderr).
fn deploy_stack(url: &str, stack: &Path, config: &Path) -> (bool, String) {
    // A cold pip install and Go build on a busy machine may take longer than the default 60 s.
    let out = cli(
        config,
        Some(url),
        &["deploy", "--timeout", "300s", "-f", stack.to_str().unwrap()],
        "",
    );
    (out.status.success(), printed(&out))
}

const STACK: &str = "\
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  py:
    lang: python3-http
    handler: ./py
    image: example/py:latest
    limits:
      memory: 256Mi
  nodefn:
    lang: node20
    handler: ./nodefn
    image: example/nodefn:latest
  gofn:
    lang: golang-middleware
    handler: ./gofn
    image: example/gofn:latest
";

/// golang-middleware's handler and go.mod, as the template makes them (its go.mod asks for a
/// newer Go than some hosts have: the runner builds with the local one).
const GO_HANDLER: &str = r#"package function

import (
	"fmt"
	"io"
	"net/http"
)

func Handle(w http.ResponseWriter, r *http.Request) {
	var input []byte

	if r.Body != nil {
		defer r.Body.Close()

		body, _ := io.ReadAll(r.Body)

		input = body
	}

	w.WriteHeader(http.StatusOK)
	w.Write([]byte(fmt.Sprintf("Body: %s %s", string(input), r.URL.Path)))
}
"#;

/// python3-http's handler, as a user writes it from the template: event and context, a dict
/// back; it imports a module of its own relatively and one from its requirements.
const PY_HANDLER: &str = r#"
import json
import resource
import six
from .greeting import greet


def handle(event, context):
    if event.path == "/fail":
        return {"statusCode": 418, "body": "teapot", "headers": {"X-Why": "asked"}}
    if event.path == "/json":
        return {"statusCode": 200, "body": {"q": event.query.get("q"), "all": event.query.getlist("q"),
                                            "limit": resource.getrlimit(resource.RLIMIT_DATA)[0]}}
    return {
        "statusCode": 200,
        "body": greet(event.body.decode()) + " via " + event.method + " " + event.path
        + " ct=" + str(event.headers.get("content-type")) + " six=" + str(six.PY3),
    }
"#;

/// node20's handler, as the template's own example has it.
const NODE_HANDLER: &str = r#"
'use strict'

module.exports = async (event, context) => {
  if (event.path === '/fail') {
    return context.status(503).fail('not today')
  }
  const result = {
    'body': event.body,
    'content-type': event.headers["content-type"],
    'method': event.method,
    'q': event.query.q,
  }
  return context
    .status(201)
    .headers({'X-Made-By': 'node'})
    .succeed(result)
}
"#;

#[tokio::test]
async fn python3_http_node20_and_golang_middleware_functions_deploy_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.as_str();
    let project = dir.path().join("project");
    for (sub, file, text) in [
        ("py", "handler.py", PY_HANDLER),
        (
            "py",
            "greeting.py",
            "def greet(name):\n    return 'hello ' + name\n",
        ),
        (
            "py",
            "requirements.txt",
            "# what the handler imports\nsix\n",
        ),
        ("nodefn", "handler.js", NODE_HANDLER),
        ("gofn", "handler.go", GO_HANDLER),
        ("gofn", "go.mod", "module handler/function\n\ngo 1.24.0\n"),
        (
            "nodefn",
            "package.json",
            r#"{"name": "openfaas-function", "version": "1.0.0", "main": "handler.js"}"#,
        ),
    ] {
        std::fs::create_dir_all(project.join(sub)).unwrap();
        std::fs::write(project.join(sub).join(file), text).unwrap();
    }
    std::fs::write(project.join("stack.yml"), STACK).unwrap();
    let (ok, out) = deploy_stack(url, &project.join("stack.yml"), dir.path());
    assert!(ok, "{out}");

    let http = http();
    // The first replica of py makes its virtual environment (pip install six) first.
    let r = eventually("the python3-http function", || async {
        let r = http
            .post(format!("{url}/function/py/greet"))
            .header("content-type", "text/plain")
            .body("sluice")
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(
        r.text().await.unwrap(),
        "hello sluice via POST /greet ct=text/plain six=True"
    );
    let r = http
        .get(format!("{url}/function/py/fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-why"], "asked");
    assert_eq!(r.text().await.unwrap(), "teapot");
    let r = http
        .get(format!("{url}/function/py/json?q=a&q=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    // limits.memory holds the server (set after pip installed the requirements, unlimited).
    assert_eq!(
        body,
        serde_json::json!({"q": "a", "all": ["a", "b"], "limit": 256 << 20})
    );

    let r = eventually("the node20 function", || async {
        let r = http
            .post(format!("{url}/function/nodefn?q=1"))
            .header("content-type", "application/json")
            .body(r#"{"x": [1, 2]}"#)
            .send()
            .await
            .ok()?;
        (r.status() == 201).then_some(r)
    })
    .await;
    assert_eq!(r.headers()["x-made-by"], "node");
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"body": {"x": [1, 2]}, "content-type": "application/json", "method": "POST", "q": "1"})
    );
    let r = http
        .get(format!("{url}/function/nodefn/fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "not today");

    let r = eventually("the golang-middleware function", || async {
        let r = http
            .post(format!("{url}/function/gofn/x"))
            .body("gopher")
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(r.text().await.unwrap(), "Body: gopher /x");

    // A lang with no local runner is refused, with the list of those there are.
    std::fs::write(
        project.join("ruby.yml"),
        "functions:\n  rb:\n    lang: ruby\n    handler: ./py\n",
    )
    .unwrap();
    let (ok, out) = deploy_stack(url, &project.join("ruby.yml"), dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("ruby") && out.contains("python3-http, python3-http-debian, node18, node20"),
        "{out}"
    );
}

/// A stack file's typos and the settings local processes cannot honour are said at deploy;
/// `environment_file` is read.
#[tokio::test]
async fn stack_files_say_what_is_not_read_or_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.as_str();
    std::fs::write(dir.path().join("env.yml"), "environment:\n  greeting: hi\n").unwrap();
    std::fs::write(
        dir.path().join("stack.yml"),
        "functions:\n  f:\n    fprocess: sh -c 'echo $greeting'\n    environment_file: [env.yml]\n    \
         labls:\n      a: b\n    limits:\n      cpu: 100m\n    readonly_root_filesystem: true\n  \
         m:\n    fprocess: >-\n      sh -c 'cat > /dev/null; grep \"Max data size\" /proc/self/limits;\n      \
         python3 -c \"bytearray(200 << 20)\" 2>&1 | tail -n 1'\n    limits:\n      memory: 64Mi\n",
    )
    .unwrap();
    let (ok, out) = deploy_stack(url, &dir.path().join("stack.yml"), dir.path());
    assert!(ok, "{out}");
    assert!(
        out.contains(r#"function f: unknown key "labls" (did you mean "labels"?)"#),
        "{out}"
    );
    assert!(
        out.contains(
            "function f: limits.cpu, readonly_root_filesystem are not honoured for functions run as local processes"
        ),
        "{out}"
    );
    let r = http()
        .post(format!("{url}/function/f"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hi\n");
    // limits.memory: the function's processes may allocate 64 MiB, no more.
    let r = http()
        .post(format!("{url}/function/m"))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let limit: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(limit[3..5], ["67108864", "67108864"], "{text}");
    assert_eq!(text.lines().nth(1), Some("MemoryError"), "{text}");

    // One that is not an amount of memory is refused at deploy, naming it.
    std::fs::write(
        dir.path().join("bad.yml"),
        "functions:\n  b:\n    fprocess: cat\n    limits:\n      memory: 128MB\n",
    )
    .unwrap();
    let (ok, out) = deploy_stack(url, &dir.path().join("bad.yml"), dir.path());
    assert!(!ok && out.contains("limits.memory \"128MB\""), "{out}");
}

/// Acceptance: for each language, in an empty directory, `sluice new x --lang L`, the
/// template's own test, `sluice deploy`, and `echo hi | sluice invoke x` answer.
#[tokio::test]
async fn each_new_function_template_tests_deploys_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.as_str();
    let run = |cwd: &Path, args: &[&str], stdin: &str| {
        let out = cli(cwd, Some(url), args, stdin);
        assert!(out.status.success(), "sluice {args:?}: {}", printed(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(dir.path(), &["new", "--list"], "");
    for (lang, test) in [
        ("python", &["python3", "-m", "unittest", "handler_test"][..]),
        ("node", &["npm", "test"][..]),
        ("go", &["go", "test"][..]),
        ("rust", &["cargo", "test", "--quiet"][..]),
        ("shell", &["sh", "handler_test.sh"][..]),
    ] {
        assert!(listed.contains(lang), "{listed}");
        let project = dir.path().join(lang);
        std::fs::create_dir(&project).unwrap();
        let name = format!("hello-{lang}");
        run(&project, &["new", &name, "--lang", lang], "");
        // The template's own test passes as made.
        let out = Command::new(test[0])
            .args(&test[1..])
            .current_dir(project.join(&name))
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap_or_else(|e| panic!("{lang}'s test runs {}: {e}", test[0]));
        assert!(
            out.status.success(),
            "{lang}'s test: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // No -f: ./stack.yml, as faas-cli reads it; the deploy waits for the function.
        let deployed = run(&project, &["deploy"], "");
        assert!(deployed.contains(&format!("{name}: ready")), "{deployed}");
        let answer = run(&project, &["invoke", &name], "hi\n");
        assert_eq!(answer, "Hello, hi!\n", "{lang}");
    }
}
