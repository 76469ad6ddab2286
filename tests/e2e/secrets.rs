//! Secrets on the process provider, through OpenFaaS's `/system/secrets` as `faas-cli secret`
//! sends it: kept sealed at rest, given to each replica as files, in no log.

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{Backend, deploy, eventually, get_json, http, sample};

/// A secret's value, looked for afterwards where it must not be.
const PLAIN: &str = "s3cr3t-9f2e71-value";

/// What `faas-cli secret create|update|remove` sends (faas-provider's `types.Secret`: `name`,
/// `namespace` and `value` or `rawValue` in base64, empty fields left out).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Value,
) -> (u16, Value) {
    let r = http
        .request(method, format!("{url}/system/secrets"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A classic function that shows what it can see of its secrets: the value of `api-key`, the
/// modes of its directory and file, and the bytes of `blob` if it has it.
fn reader(secrets: &[&str]) -> Value {
    let mut body = sample(
        "reader",
        r#"sh -c 'cat "$SLUICE_SECRETS_DIR/api-key"; echo; stat -c %a "$SLUICE_SECRETS_DIR" "$SLUICE_SECRETS_DIR/api-key"; [ ! -f "$SLUICE_SECRETS_DIR/blob" ] || od -An -tu1 "$SLUICE_SECRETS_DIR/blob"'"#,
        false,
        &[],
    );
    body["secrets"] = json!(secrets);
    body
}

/// `faas-cli deploy` of a function that exists: `PUT /system/functions`.
async fn deploy_again(http: &reqwest::Client, url: &str, body: &Value) {
    let r = http
        .put(format!("{url}/system/functions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn call(http: &reqwest::Client, url: &str) -> String {
    let r = http
        .post(format!("{url}/function/reader"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn secrets_reach_functions_as_files_and_nowhere_else(backend: Backend) {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = backend.up(&data, &[]);
    let (url, http) = (sluice.url.clone(), http());

    // faas-cli secret create api-key --from-literal ...; then --from-file (rawValue).
    let (s, _) = send(
        &http,
        Method::POST,
        &url,
        json!({"name": "api-key", "value": PLAIN}),
    )
    .await;
    assert_eq!(s, 202);
    let raw = base64::engine::general_purpose::STANDARD.encode([0u8, 1, 2, 255]);
    let (s, _) = send(
        &http,
        Method::POST,
        &url,
        json!({"name": "blob", "rawValue": raw}),
    )
    .await;
    assert_eq!(s, 202);
    // One that exists: 409, which faas-cli reports as "already exists".
    let (s, body) = send(
        &http,
        Method::POST,
        &url,
        json!({"name": "api-key", "value": "x"}),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    // A value over the management API's body limit (1 MiB, Kubernetes' own for a Secret):
    // refused, naming the limit.
    let big = "x".repeat(1024 * 1024 + 1);
    let (s, body) = send(
        &http,
        Method::POST,
        &url,
        json!({"name": "big", "value": big}),
    )
    .await;
    assert_eq!(s, 413, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("1048576"),
        "{body}"
    );

    // faas-cli secret list: names only.
    let list: Value = get_json(&http, format!("{url}/system/secrets")).await;
    assert_eq!(
        list,
        json!([
            {"name": "api-key", "namespace": "openfaas-fn"},
            {"name": "blob", "namespace": "openfaas-fn"}
        ])
    );
    let other: Value = get_json(&http, format!("{url}/system/secrets?namespace=dev")).await;
    assert_eq!(other, json!([]));

    // A function naming a secret that does not exist is refused, naming it, and not stored.
    let r = http
        .post(format!("{url}/system/functions"))
        .json(&reader(&["api-key", "nope"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("nope") && !message.contains("api-key,"),
        "{body}"
    );
    let r = http
        .get(format!("{url}/system/function/reader"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Named, they are files in the replica's own directory (0700, files 0400).
    deploy(&http, &url, &reader(&["api-key", "blob"])).await;
    assert_eq!(
        call(&http, &url).await,
        format!("{PLAIN}\n700\n400\n   0   1   2 255\n")
    );

    // faas-cli secret update: a new value, which the function gets when it is deployed again.
    let (s, _) = send(
        &http,
        Method::PUT,
        &url,
        json!({"name": "api-key", "value": "second"}),
    )
    .await;
    assert_eq!(s, 202);
    let (s, _) = send(
        &http,
        Method::PUT,
        &url,
        json!({"name": "nope", "value": "x"}),
    )
    .await;
    assert_eq!(s, 404);
    deploy_again(&http, &url, &reader(&["api-key", "blob"])).await;
    eventually("the redeployed function to read the new value", || async {
        call(&http, &url)
            .await
            .starts_with("second\n")
            .then_some(())
    })
    .await;

    // faas-cli secret remove: refused while a function names the secret, naming it.
    let (s, body) = send(&http, Method::DELETE, &url, json!({"name": "blob"})).await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("function reader"),
        "{body}"
    );
    deploy_again(&http, &url, &reader(&["api-key"])).await;
    let (s, _) = send(&http, Method::DELETE, &url, json!({"name": "blob"})).await;
    assert_eq!(s, 202);
    let (s, _) = send(&http, Method::DELETE, &url, json!({"name": "blob"})).await;
    assert_eq!(s, 404);
    let list: Value = get_json(&http, format!("{url}/system/secrets")).await;
    assert_eq!(
        list,
        json!([{"name": "api-key", "namespace": "openfaas-fn"}])
    );
    // The replica that had blob serves until its replacement is ready.
    eventually("the redeployed function without blob", || async {
        (call(&http, &url).await == "second\n700\n400\n").then_some(())
    })
    .await;

    // A restart brings the function back with its secrets (the key is kept in the data dir).
    assert!(sluice.stop().success());
    // Stopped replicas leave no secrets behind.
    let left: Vec<_> = std::fs::read_dir(data.join("run/secrets"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let sluice = backend.up(&data, &[]);
    eventually("the restored function", || async {
        let r = http
            .post(format!("{}/function/reader", sluice.url))
            .send()
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        (text == "second\n700\n400\n").then_some(())
    })
    .await;
    assert!(sluice.stop().success());

    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(data.join("secrets.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    // Not in any log, not in the database in plain text.
    let log = std::fs::read(data.with_extension("log")).unwrap();
    assert!(
        contains(&log, "secret stored"),
        "the log says nothing of secrets"
    );
    assert!(!contains(&log, PLAIN) && !contains(&log, "second"));
    match &backend {
        Backend::Embedded => {
            let mut looked = 0;
            for entry in std::fs::read_dir(&data).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("sluice.db")
                {
                    looked += 1;
                    let bytes = std::fs::read(&path).unwrap();
                    assert!(
                        !contains(&bytes, PLAIN),
                        "{} holds the value",
                        path.display()
                    );
                }
            }
            assert!(looked > 0);
        }
        Backend::Shared(shared) => {
            use sqlx::Connection;
            let mut db = sqlx::PgConnection::connect(&shared.db.url).await.unwrap();
            let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed FROM secrets")
                .fetch_all(&mut db)
                .await
                .unwrap();
            assert_eq!(rows.len(), 1);
            assert!(!contains(&rows[0], "second"));
        }
    }
}

on_both_backends!(secrets_reach_functions_as_files_and_nowhere_else);

/// An operator's key (`--secrets-key-file`) is used instead of one in the data dir; another key
/// than the kept secrets were sealed under, or one that is not 32 bytes in base64, stops Sluice
/// before it listens, saying so.
#[tokio::test]
async fn the_operators_secrets_key_is_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=\n").unwrap();
    let data = dir.path().join("data");
    let key_arg = key_path.to_str().unwrap();
    let sluice = crate::harness::Sluice::start(&data, &["--secrets-key-file", key_arg]);
    let (s, _) = send(
        &http(),
        reqwest::Method::POST,
        &sluice.url,
        json!({"name": "api-key", "value": PLAIN}),
    )
    .await;
    assert_eq!(s, 202);
    assert!(sluice.stop().success());
    assert!(!data.join("secrets.key").exists());

    let start = |key: &str| {
        std::fs::write(&key_path, key).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--secrets-key-file",
                key_arg,
                "--data-dir",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Another key than the one the kept secrets were sealed under: refused at start.
    let stderr = start("KysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKys=\n");
    assert!(
        stderr.contains("the secrets key does not fit the secrets in the database")
            && stderr.contains("api-key"),
        "{stderr}"
    );
    // Not a key at all.
    let stderr = start("c2hvcnQ=\n");
    assert!(
        stderr.contains(key_arg) && stderr.contains("not 32 bytes in base64"),
        "{stderr}"
    );
}
