//! The portal's Deploy view over plain HTTP: the one-function form (each error next to its
//! field, a 400, what was typed kept; a 303 to the function's page when it is deployed) and a
//! pasted stack.yml (each function deployed or updated, or refused saying why).

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION};
use serde_json::Value;

use crate::harness::{eventually, functions_dir, get_json, up_with_echo};
use crate::portal::{csrf_of, log_in};

/// A client that follows no redirect, with a logged-in session's cookie and CSRF token.
struct Session {
    client: reqwest::Client,
    url: String,
    cookie: String,
    csrf: String,
}

impl Session {
    async fn start(url: &str) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let (cookie, _) = log_in(url, &[]).await;
        let page = client
            .get(format!("{url}/ui/deploy"))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let csrf = csrf_of(&page.text().await.unwrap());
        Self {
            client,
            url: url.to_owned(),
            cookie,
            csrf,
        }
    }

    /// Posts `form` (with the session's CSRF token) to `path`: the status, the `Location` and
    /// the page.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String, String) {
        let mut form = form.to_vec();
        form.push(("_csrf", &self.csrf));
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header(COOKIE, &self.cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        let location = r
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (r.status(), location, r.text().await.unwrap())
    }
}

/// The text of the element with id `id` in `page` (up to its closing tag), if there is one.
fn element<'a>(page: &'a str, id: &str) -> Option<&'a str> {
    let start = page.find(&format!(r#"id="{id}""#))?;
    let from = start + page[start..].find('>')? + 1;
    Some(&page[from..from + page[from..].find('<')?])
}

/// The whole tag (`<input ...>`) of the element with id `id`.
fn tag<'a>(page: &'a str, id: &str) -> &'a str {
    let at = page
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element {id} in {page}"));
    let start = page[..at].rfind('<').unwrap();
    &page[start..at + page[at..].find('>').unwrap() + 1]
}

#[tokio::test]
async fn the_deploy_form_says_each_error_by_its_field_and_deploys_when_right() {
    let (_dir, sluice, http) = up_with_echo(&[]).await;
    let url = &sluice.url;
    let session = Session::start(url).await;
    let workdir = functions_dir().display().to_string();
    let page = session
        .client
        .get(format!("{url}/ui/deploy"))
        .header(COOKIE, &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Both forms, and the templates the process provider runs.
    for needle in [
        r#"action="/ui/deploy""#,
        r#"action="/ui/deploy/stack""#,
        r#"data-fill="stack""#,
        r#"<option value="python3-http""#,
        r#"aria-current="page">Deploy"#,
    ] {
        assert!(page.contains(needle), "{needle} missing from {page}");
    }

    // Each field's error next to it, a 400, and what was typed kept.
    let (status, _, page) = session
        .post(
            "/ui/deploy",
            &[
                ("name", "Bad_Name"),
                ("kind", "process"),
                ("command", "python3 -u echo.py"),
                ("env", "GREETING hi"),
                ("scale_max", "many"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let name = tag(&page, "name");
    assert!(name.contains(r#"aria-invalid="true""#), "{name}");
    assert!(name.contains("name-error"), "{name}");
    assert!(name.contains(r#"value="Bad_Name""#), "{name}");
    let error = element(&page, "name-error").unwrap();
    assert!(error.contains("DNS-1123"), "{error}");
    assert!(element(&page, "env-error").unwrap().contains("line 1"));
    assert!(
        element(&page, "scale-max-error")
            .unwrap()
            .contains("not a whole number")
    );
    assert!(tag(&page, "command").contains(r#"value="python3 -u echo.py""#));
    assert!(element(&page, "command-error").is_none(), "{page}");

    // Errors only the deploy finds, next to the field they concern.
    for (form, field, needle) in [
        (
            vec![("name", "echo"), ("command", "cat")],
            "name-error",
            "already exists",
        ),
        (
            vec![("name", "ghost"), ("command", "no-such-program-sluice")],
            "command-error",
            "no-such-program-sluice",
        ),
        (
            vec![
                ("name", "needy"),
                ("command", "cat"),
                ("secrets", "not-created"),
            ],
            "secrets-error",
            "not-created",
        ),
        (
            vec![
                ("name", "gone"),
                ("command", "cat"),
                ("workdir", "/no/such/dir"),
            ],
            "workdir-error",
            "/no/such/dir",
        ),
        (
            vec![
                ("name", "big"),
                ("command", "cat"),
                ("labels", "com.sluice.rate-limit=0"),
            ],
            "labels-error",
            "com.sluice.rate-limit",
        ),
    ] {
        let (status, _, page) = session.post("/ui/deploy", &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form:?}");
        let error = element(&page, field).unwrap_or_else(|| panic!("no {field} in {page}"));
        assert!(error.contains(needle), "{form:?}: {error}");
    }
    for name in ["ghost", "needy", "gone", "big"] {
        let r = http
            .get(format!("{url}/system/function/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{name} was deployed");
    }

    // Right: deployed through the API's path, and off to its page.
    let (status, location, page) = session
        .post(
            "/ui/deploy",
            &[
                ("name", "hello"),
                ("namespace", "openfaas-fn"),
                ("kind", "process"),
                ("command", "python3 -u echo.py"),
                ("workdir", &workdir),
                ("http", "on"),
                ("env", "GREETING=hi"),
                ("labels", "team=portal"),
                ("scale_min", "1"),
                ("scale_max", "3"),
                ("scale_type", "capacity"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert_eq!(location, "/ui/functions/openfaas-fn/hello");
    let status: Value = get_json(&http, format!("{url}/system/function/hello")).await;
    assert_eq!(status["envProcess"], "python3 -u echo.py");
    assert_eq!(status["envVars"]["mode"], "http");
    assert_eq!(status["envVars"]["GREETING"], "hi");
    assert_eq!(status["labels"]["team"], "portal");
    assert_eq!(status["labels"]["com.openfaas.scale.max"], "3");
    assert_eq!(status["labels"]["com.openfaas.scale.type"], "capacity");
    assert_eq!(status["annotations"]["com.sluice.workdir"], workdir);
    let answer = eventually("hello to answer", || async {
        let r = http
            .post(format!("{url}/function/hello"))
            .body("from the form")
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(r.text().await.ok()?)
    })
    .await;
    assert!(answer.contains("from the form"), "{answer}");

    // An existing function is replaced only when asked.
    let (status, location, page) = session
        .post(
            "/ui/deploy",
            &[
                ("name", "echo"),
                ("command", "python3 -u echo.py"),
                ("workdir", &workdir),
                ("http", "on"),
                ("labels", "team=replaced"),
                ("replace", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert_eq!(location, "/ui/functions/openfaas-fn/echo");
    let status: Value = get_json(&http, format!("{url}/system/function/echo")).await;
    assert_eq!(status["labels"]["team"], "replaced");

    // A template: its handler directory, run by the template's server.
    let handler = tempfile::tempdir().unwrap();
    std::fs::write(
        handler.path().join("handler.py"),
        "def handle(event, context):\n    return {'statusCode': 200, 'body': 'templated'}\n",
    )
    .unwrap();
    let (status, location, page) = session
        .post(
            "/ui/deploy",
            &[
                ("name", "tpl"),
                ("kind", "template"),
                ("lang", "python3-http"),
                ("handler", handler.path().to_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert_eq!(location, "/ui/functions/openfaas-fn/tpl");
    let answer = eventually("tpl to answer", || async {
        let r = http.post(format!("{url}/function/tpl")).send().await.ok()?;
        r.status().is_success().then_some(r.text().await.ok()?)
    })
    .await;
    assert_eq!(answer, "templated");

    // Without the session's CSRF token, neither form does anything.
    for path in ["/ui/deploy", "/ui/deploy/stack"] {
        let r = session
            .client
            .post(format!("{url}{path}"))
            .header(COOKIE, &session.cookie)
            .form(&[("name", "sneaky"), ("command", "cat"), ("stack", "")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn a_pasted_stack_deploys_each_function_and_refuses_what_it_cannot_place() {
    let (_dir, sluice, http) = up_with_echo(&[]).await;
    let url = &sluice.url;
    let session = Session::start(url).await;
    let functions = functions_dir().display().to_string();

    // The samples' stack, its handler made absolute (it is relative to the file, which the
    // gateway's machine does not have), and a key no version of the format has.
    let sample = std::fs::read_to_string(functions_dir().join("stack.yml")).unwrap();
    assert!(sample.contains("handler: ./"));
    let stack = sample.replace("handler: ./", &format!("handler: {functions}"))
        + "  extra:\n    fprocess: cat\n    handler: "
        + &functions
        + "\n    labls:\n      a: b\n";
    let (status, _, page) = session.post("/ui/deploy/stack", &[("stack", &stack)]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let names = ["echo", "extra", "fail", "flaky", "sha512sum", "sleep"];
    let outcome = |page: &str, name: &str| -> String {
        let at = page
            .find(&format!(r#"<tr data-function="{name}""#))
            .unwrap_or_else(|| panic!("no row for {name} in {page}"));
        let row = &page[at..at + page[at..].find("</tr>").unwrap()];
        let o = row.find("data-outcome=\"").unwrap() + "data-outcome=\"".len();
        row[o..o + row[o..].find('"').unwrap()].to_owned()
    };
    // echo was there already: updated; the rest are new.
    assert_eq!(outcome(&page, "echo"), "updated");
    for name in &names[1..] {
        assert_eq!(outcome(&page, name), "deployed", "{name}");
    }
    assert!(
        page.contains(
            "function extra: unknown key &quot;labls&quot; (did you mean &quot;labels&quot;?)"
        ),
        "{page}"
    );
    let listed: Vec<Value> = get_json(&http, format!("{url}/system/functions")).await;
    let mut listed: Vec<&str> = listed.iter().map(|f| f["name"].as_str().unwrap()).collect();
    listed.sort_unstable();
    assert_eq!(listed, names);
    let sleep: Value = get_json(&http, format!("{url}/system/function/sleep")).await;
    assert_eq!(sleep["labels"]["com.openfaas.scale.min"], "2");
    assert_eq!(sleep["annotations"]["com.sluice.workdir"], functions);

    // A relative handler is refused, saying why, and so is an environment_file (the portal
    // reads no file of the gateway's): neither function is deployed; the others are.
    let relative = "functions:\n  rel:\n    fprocess: cat\n    handler: ./\n  \
                    envfile:\n    fprocess: cat\n    environment_file: [/etc/hostname]\n  \
                    fine:\n    fprocess: cat\n";
    let (status, _, page) = session
        .post("/ui/deploy/stack", &[("stack", relative)])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert_eq!(outcome(&page, "rel"), "failed");
    assert!(
        page.contains(
            "handler directory ./ of function rel: handler paths must be absolute on the \
             gateway's machine"
        ),
        "{page}"
    );
    assert_eq!(outcome(&page, "envfile"), "failed");
    assert!(page.contains("the portal reads no files"), "{page}");
    assert_eq!(outcome(&page, "fine"), "deployed");
    for name in ["rel", "envfile"] {
        let r = http
            .get(format!("{url}/system/function/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{name}");
    }

    // Not a stack file, none, too many functions: said next to the text area, kept as pasted.
    let many: String = (0..101)
        .map(|i| format!("  f{i}:\n    fprocess: cat\n"))
        .collect();
    for (stack, needle) in [
        ("functions: [1, 2", "this is not a stack file"),
        ("", "paste a stack.yml"),
        ("version: 1.0\n", "has no functions"),
        (&*format!("functions:\n{many}"), "at most 100"),
    ] {
        let (status, _, page) = session.post("/ui/deploy/stack", &[("stack", stack)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{stack}");
        let error = element(&page, "stack-error").unwrap_or_else(|| panic!("{page}"));
        assert!(error.contains(needle), "{stack}: {error}");
        assert!(tag(&page, "stack").contains(r#"aria-invalid="true""#));
    }
    let r = http
        .get(format!("{url}/system/function/f0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
