//! The Deploy view: one function from a form (its command or template, environment, labels,
//! secrets by name, scaling), or every function of a pasted `stack.yml`.
//!
//! Both go through the management API's own `deploy` and `redeploy` (`crate::functions`), so
//! every check the API makes applies and the portal can deploy nothing the API would refuse.
//! What the form can check itself (names, numbers, `KEY=value` lines, label keys) is checked
//! first and said next to its field; an error the deploy returns is put next to the field it
//! concerns when its words say which, else above the form.
//!
//! A pasted stack file has no directory on the gateway's machine, so its relative paths mean
//! nothing there: a `handler:` must be absolute (and is checked by the provider as the API's
//! `com.sluice.workdir` is), and no `environment_file:` is read. Resolving relative paths
//! against some directory of the gateway's would point functions at places the person pasting
//! never chose and cannot see; reading files would let the page read what the gateway may read
//! (YAML's errors quote the text they could not take), which the API never does.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use sluice_core::config::{
    LANG_ANNOTATION, MAX_SCALE_TARGET, SCALE_MAX_LABEL, SCALE_MIN_LABEL, SCALE_PROPORTION_LABEL,
    SCALE_TARGET_LABEL, SCALE_TYPE_LABEL, SCALE_ZERO_DURATION_LABEL, SCALE_ZERO_LABEL,
    WORKDIR_ANNOTATION,
};
use sluice_core::name::validate_label;
use sluice_core::stack::{Stack, StackError, StackPaths};
use sluice_core::{FunctionDeployment, FunctionRef, default_namespace};

use crate::AppState;
use crate::error::ApiError;
use crate::ui::Viewer;
use crate::ui::layout::{self, Nav, csrf_field, notice};

/// Most functions one pasted stack file may deploy.
pub(crate) const MAX_STACK_FUNCTIONS: usize = 100;

/// What the one-function form sends (and is filled with again when it is shown with errors).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DeployForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    image: String,
    /// `process` (a command) or `template` (a `lang:` template and its handler directory).
    #[serde(default)]
    kind: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    workdir: String,
    /// Checkboxes: sent (as `on`) only when ticked.
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    lang: String,
    #[serde(default)]
    handler: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    secrets: String,
    #[serde(default)]
    scale_min: String,
    #[serde(default)]
    scale_max: String,
    #[serde(default)]
    scale_target: String,
    #[serde(default)]
    scale_type: String,
    #[serde(default)]
    scale_zero: Option<String>,
    #[serde(default)]
    replace: Option<String>,
}

impl Default for DeployForm {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: default_namespace().to_owned(),
            image: String::new(),
            kind: "process".into(),
            command: String::new(),
            workdir: String::new(),
            http: None,
            lang: String::new(),
            handler: String::new(),
            env: String::new(),
            labels: String::new(),
            secrets: String::new(),
            scale_min: String::new(),
            scale_max: String::new(),
            scale_target: String::new(),
            scale_type: String::new(),
            scale_zero: None,
            replace: None,
        }
    }
}

impl DeployForm {
    fn template(&self) -> bool {
        self.kind == "template"
    }
}

/// What the stack form sends.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StackForm {
    #[serde(default)]
    stack: String,
}

/// Errors by the field they concern (its id), and one for above the form.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Problems {
    fields: BTreeMap<&'static str, String>,
    notice: Option<String>,
}

impl Problems {
    fn field(&mut self, field: &'static str, message: impl Into<String>) {
        // The first problem found with a field is the one shown.
        self.fields.entry(field).or_insert_with(|| message.into());
    }

    fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.notice.is_none()
    }
}

/// What the gateway offers the form: the templates its provider runs, and its replica ceiling.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    templates: Vec<&'static str>,
    max_replicas: u32,
}

impl Offer {
    fn of(state: &AppState) -> Self {
        Self {
            templates: state.orchestrator.templates(),
            max_replicas: state.config.max_replicas_limit,
        }
    }
}

/// The form checked field by field: the function and its deployment, or every field's problem.
pub(crate) fn parse(
    form: &DeployForm,
    offer: &Offer,
) -> Result<(FunctionRef, FunctionDeployment), Problems> {
    let mut problems = Problems::default();
    let name = form.name.trim();
    if let Err(e) = validate_label("function name", name) {
        problems.field("name", e.to_string());
    }
    let namespace = match form.namespace.trim() {
        "" => default_namespace(),
        ns => ns,
    };
    if let Err(e) = validate_label("namespace", namespace) {
        problems.field("namespace", e.to_string());
    }
    let mut env = pairs(&form.env, "variable").unwrap_or_else(|e| {
        problems.field("env", e);
        BTreeMap::new()
    });
    let mut annotations = BTreeMap::new();
    let mut env_process = None;
    if form.template() {
        let lang = form.lang.trim();
        if offer.templates.is_empty() {
            problems.field(
                "lang",
                "this gateway's provider runs no templates: give the function a command",
            );
        } else if !offer.templates.contains(&lang) {
            problems.field(
                "lang",
                format!(
                    "choose one of the templates: {}",
                    offer.templates.join(", ")
                ),
            );
        }
        match absolute_dir(&form.handler, "the handler directory") {
            Ok(dir) => {
                annotations.insert(WORKDIR_ANNOTATION.to_owned(), dir);
            }
            Err(e) => problems.field("handler", e),
        }
        annotations.insert(LANG_ANNOTATION.to_owned(), lang.to_owned());
    } else {
        let command = form.command.trim();
        if command.is_empty() {
            problems.field(
                "command",
                "a command is required: it runs once per request, or as a server on $PORT in \
                 HTTP mode",
            );
        }
        env_process = Some(command.to_owned());
        if !form.workdir.trim().is_empty() {
            match absolute_dir(&form.workdir, "the working directory") {
                Ok(dir) => {
                    annotations.insert(WORKDIR_ANNOTATION.to_owned(), dir);
                }
                Err(e) => problems.field("workdir", e),
            }
        }
        if form.http.is_some() {
            match env.get("mode").map(|m| m.trim()) {
                None | Some("http") => {
                    env.insert("mode".to_owned(), "http".to_owned());
                }
                Some(other) => problems.field(
                    "env",
                    format!("mode is {other:?} here but HTTP mode is ticked: leave mode out"),
                ),
            }
        }
    }
    let mut labels = pairs(&form.labels, "label").unwrap_or_else(|e| {
        problems.field("labels", e);
        BTreeMap::new()
    });
    if let Some(e) = labels.keys().find_map(|k| label_key(k).err()) {
        problems.field("labels", e);
    }
    let secrets = secret_names(&form.secrets).unwrap_or_else(|e| {
        problems.field("secrets", e);
        Vec::new()
    });
    for (label, value) in scaling(form, offer, &mut problems) {
        if labels.contains_key(label) {
            problems.field(
                "labels",
                format!("{label} is set in the scaling fields: leave it out here"),
            );
        }
        labels.insert(label.to_owned(), value);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let function = FunctionRef::new(name, Some(namespace)).map_err(|e| {
        let mut p = Problems::default();
        p.field("name", e.to_string());
        p
    })?;
    let deployment = FunctionDeployment {
        service: function.name.clone(),
        image: form.image.trim().to_owned(),
        namespace: Some(function.namespace.clone()),
        env_process,
        env_vars: env,
        secrets,
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    };
    Ok((function, deployment))
}

/// The scaling fields as the labels they set; a field left empty sets nothing (the function
/// gets the default).
fn scaling(
    form: &DeployForm,
    offer: &Offer,
    problems: &mut Problems,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let limit = offer.max_replicas;
    let whole = |field: &'static str, text: &str, problems: &mut Problems| -> Option<u32> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        match text.parse::<u32>() {
            Ok(0) => {
                let hint = if field == "scale-min" {
                    " (to let it go to zero when idle, tick scale to zero)"
                } else {
                    ""
                };
                problems.field(field, format!("must be at least 1{hint}"));
                None
            }
            Ok(n) if n > limit => {
                problems.field(
                    field,
                    format!("must be at most {limit}, this gateway's limit of replicas"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                problems.field(field, format!("{text:?} is not a whole number of replicas"));
                None
            }
        }
    };
    let min = whole("scale-min", &form.scale_min, problems);
    let max = whole("scale-max", &form.scale_max, problems);
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        problems.field("scale-min", format!("is above the maximum ({max})"));
    }
    if let Some(min) = min {
        out.push((SCALE_MIN_LABEL, min.to_string()));
    }
    if let Some(max) = max {
        out.push((SCALE_MAX_LABEL, max.to_string()));
    }
    let target = form.scale_target.trim();
    if !target.is_empty() {
        match target.parse::<f64>() {
            Ok(t) if t > 0.0 && t <= MAX_SCALE_TARGET => {
                out.push((SCALE_TARGET_LABEL, target.to_owned()));
            }
            _ => problems.field(
                "scale-target",
                format!("must be a number above 0 and at most {MAX_SCALE_TARGET}, got {target:?}"),
            ),
        }
    }
    match form.scale_type.trim() {
        "" => {}
        t @ ("rps" | "capacity" | "cpu") => {
            out.push((SCALE_TYPE_LABEL, t.to_owned()));
        }
        other => problems.field(
            "scale-type",
            format!("must be rps, capacity or cpu, got {other:?}"),
        ),
    }
    if form.scale_zero.is_some() {
        out.push((SCALE_ZERO_LABEL, "true".to_owned()));
    }
    out
}

/// A directory on the gateway's machine, which must be given as an absolute path.
fn absolute_dir(text: &str, what: &str) -> Result<String, String> {
    let dir = text.trim();
    if dir.is_empty() {
        return Err(format!(
            "{what} is required: an absolute path on the gateway's machine"
        ));
    }
    if !dir.starts_with('/') {
        return Err(format!(
            "{what} must be an absolute path on the gateway's machine, got {dir:?}"
        ));
    }
    Ok(dir.to_owned())
}

/// `KEY=value` lines (blank lines and `#` comments skipped) as a map; the value is kept as
/// typed, the key trimmed. `what` names a line's kind in errors.
pub(crate) fn pairs(text: &str, what: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    let mut first_line = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {n} ({:?}) is not KEY=value",
                shortened(line.trim())
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("line {n} has no {what} name before '='"));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "line {n}: the {what} name {:?} has a space or control character in it",
                shortened(key)
            ));
        }
        if let Some(first) = first_line.insert(key.to_owned(), n) {
            return Err(format!(
                "line {n} sets {key} again (line {first} set it first)"
            ));
        }
        map.insert(key.to_owned(), value.to_owned());
    }
    Ok(map)
}

/// At most the first 60 characters of something typed, for an error.
fn shortened(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A label key as Kubernetes takes one (`[prefix/]name`): the name at most 63 characters of
/// letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit; the prefix
/// a DNS subdomain.
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("label key {:?} {why}", shortened(key)));
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 {
        return bad("must have a name of 1 to 63 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        return bad(
            "is not a label key: use letters, digits, '-', '_' and '.', starting and ending \
             with a letter or digit (with an optional prefix/, such as example.com/team)",
        );
    }
    if let Some(prefix) = prefix
        && (prefix.is_empty()
            || prefix.len() > 253
            || prefix
                .split('.')
                .any(|part| validate_label("prefix", part).is_err()))
    {
        return bad("has a prefix that is not a DNS name (lower-case, such as example.com)");
    }
    Ok(())
}

/// Secret names separated by commas or spaces, each a DNS-1123 label (as the secrets API
/// takes them), in order, once each.
pub(crate) fn secret_names(text: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        validate_label("secret name", name).map_err(|e| e.to_string())?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The field an error the deploy returned concerns, read from its words (the API's and the
/// provider's messages name the setting); `None`: it goes above the form.
pub(crate) fn field_of(message: &str, template: bool) -> Option<&'static str> {
    let has = |s: &str| message.contains(s);
    // The longer labels first: each scale label's name begins another's.
    if has(SCALE_PROPORTION_LABEL) || has(SCALE_ZERO_DURATION_LABEL) {
        return Some("labels");
    }
    for (label, field) in [
        (SCALE_MIN_LABEL, "scale-min"),
        (SCALE_MAX_LABEL, "scale-max"),
        (SCALE_TARGET_LABEL, "scale-target"),
        (SCALE_TYPE_LABEL, "scale-type"),
        (SCALE_ZERO_LABEL, "scale-zero"),
    ] {
        if has(label) {
            return Some(field);
        }
    }
    if has("secret") {
        return Some("secrets");
    }
    if has(WORKDIR_ANNOTATION) {
        return Some(if template { "handler" } else { "workdir" });
    }
    if message.starts_with("lang ") || has(" lang ") {
        return Some("lang");
    }
    if has("command") || has("envProcess") || has("fprocess") {
        return Some(if template { "lang" } else { "command" });
    }
    if has("envVars.mode") {
        return Some(if template { "env" } else { "http" });
    }
    if has("envVars") {
        return Some("env");
    }
    if has("label") {
        return Some("labels");
    }
    if message.starts_with("image ") {
        return Some("image");
    }
    None
}

/// The form the session check read and held (within the form limit and the body budget).
async fn read<T: serde::de::DeserializeOwned>(
    _state: &AppState,
    request: Request,
) -> Result<T, ApiError> {
    let (parts, _) = request.into_parts();
    parts
        .extensions
        .get::<crate::ui::HeldForm>()
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "a form must be sent as application/x-www-form-urlencoded".into(),
            )
        })?
        .parse()
}

/// `GET /ui/deploy`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    render(
        &viewer,
        &Offer::of(&state),
        &DeployForm::default(),
        &Problems::default(),
        "",
        None,
        StatusCode::OK,
    )
}

/// `POST /ui/deploy`: one function, deployed (or, when asked, replaced) through the API's
/// own path; 303 to its page, or the form again with what is wrong (400).
pub(crate) async fn deploy(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    request: Request,
) -> Result<Response, ApiError> {
    let form: DeployForm = read(&state, request).await?;
    let offer = Offer::of(&state);
    let refused = |problems: Problems, status: StatusCode| {
        Ok(render(&viewer, &offer, &form, &problems, "", None, status))
    };
    let (function, deployment) = match parse(&form, &offer) {
        Ok(parsed) => parsed,
        Err(problems) => return refused(problems, StatusCode::BAD_REQUEST),
    };
    let replace = form.replace.is_some();
    let exists = state.functions.get(&function).await?.is_some();
    if exists && !replace {
        let mut problems = Problems::default();
        problems.field(
            "name",
            format!(
                "function {} already exists in namespace {}: tick \"Replace it if it exists\" \
                 to update it",
                function.name, function.namespace
            ),
        );
        return refused(problems, StatusCode::BAD_REQUEST);
    }
    match upsert(&state, deployment, exists).await {
        Ok((function, _)) => Ok(Redirect::to(&format!(
            "/ui/functions/{}/{}",
            function.namespace, function.name
        ))
        .into_response()),
        Err(e) => {
            let status = if e.status().is_client_error() {
                StatusCode::BAD_REQUEST
            } else {
                tracing::warn!(error = ?e, function = %function, "portal deploy failed");
                e.status()
            };
            let message = e.to_string();
            let mut problems = Problems::default();
            match field_of(&message, form.template()) {
                Some(field) => problems.field(field, message),
                None => problems.notice = Some(message),
            }
            refused(problems, status)
        }
    }
}

/// Whether a function was new or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    Deployed,
    Updated,
}

/// Deploys a function, or redeploys it when it exists (also when it came or went meanwhile).
async fn upsert(
    state: &AppState,
    deployment: FunctionDeployment,
    exists: bool,
) -> Result<(FunctionRef, Done), ApiError> {
    if exists {
        match crate::functions::redeploy(state, deployment.clone()).await {
            Ok(f) => return Ok((f, Done::Updated)),
            // Removed since it was looked up: deployed afresh.
            Err(ApiError::FunctionNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    match crate::functions::deploy(state, deployment.clone()).await {
        Ok(f) => Ok((f, Done::Deployed)),
        // Deployed meanwhile by someone else: replaced, as asked.
        Err(ApiError::Conflict(_)) if exists => crate::functions::redeploy(state, deployment)
            .await
            .map(|f| (f, Done::Updated)),
        Err(e) => Err(e),
    }
}

/// A pasted stack file's paths: it has no directory on the gateway's machine, so a handler
/// directory must be absolute there, and no file is read (see the module's comment).
#[derive(Debug)]
pub(crate) struct PastedPaths;

impl StackPaths for PastedPaths {
    fn shown(&self, path: &str) -> String {
        path.to_owned()
    }

    fn handler_dir(&self, handler: &str) -> Result<String, String> {
        if handler.starts_with('/') {
            Ok(handler.to_owned())
        } else {
            Err(
                "handler paths must be absolute on the gateway's machine (a pasted stack file \
                 has no directory there for them to be relative to)"
                    .into(),
            )
        }
    }

    fn environment_file(&self, _file: &str) -> Result<String, String> {
        Err(
            "the portal reads no files on the gateway's machine: put the variables under the \
             function's environment:"
                .into(),
        )
    }
}

/// What became of one function of a stack.
#[derive(Debug)]
struct Outcome {
    name: String,
    /// Its page, once it is deployed.
    href: Option<String>,
    result: Result<Done, String>,
}

/// `POST /ui/deploy/stack`: every function of a pasted stack file, each deployed or updated;
/// the page says what became of each (400 if any failed), with the file's warnings.
pub(crate) async fn deploy_stack(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    request: Request,
) -> Result<Response, ApiError> {
    let form: StackForm = read(&state, request).await?;
    let offer = Offer::of(&state);
    let text = form.stack.as_str();
    let refuse = |message: String| {
        let mut problems = Problems::default();
        problems.field("stack", message);
        render(
            &viewer,
            &offer,
            &DeployForm::default(),
            &problems,
            text,
            None,
            StatusCode::BAD_REQUEST,
        )
    };
    if text.trim().is_empty() {
        return Ok(refuse(
            "paste a stack.yml here, or choose the file above".into(),
        ));
    }
    let stack = match Stack::parse(text) {
        Ok(stack) => stack,
        Err(e) => return Ok(refuse(format!("this is not a stack file: {e}"))),
    };
    if stack.functions.is_empty() {
        return Ok(refuse("the stack file has no functions: to deploy".into()));
    }
    if stack.functions.len() > MAX_STACK_FUNCTIONS {
        return Ok(refuse(format!(
            "the stack file has {} functions; the portal deploys at most {MAX_STACK_FUNCTIONS} \
             at a time",
            stack.functions.len()
        )));
    }
    let mut warnings = stack.warnings();
    let local = !state.orchestrator.shared();
    let mut outcomes = Vec::with_capacity(stack.functions.len());
    for (name, f) in &stack.functions {
        let unhonoured = f.unhonoured_locally();
        if local && !unhonoured.is_empty() {
            warnings.push(format!(
                "function {name}: {} {} not honoured for functions run as local processes",
                unhonoured.join(", "),
                if unhonoured.len() == 1 { "is" } else { "are" }
            ));
        }
        let result = match f.deployment(name, &PastedPaths) {
            Err(StackError::Function(e) | StackError::Invalid(e)) => Err(e),
            Ok(d) => match stack_function(&state, d).await {
                Ok((function, done)) => {
                    outcomes.push(Outcome {
                        name: name.clone(),
                        href: Some(format!(
                            "/ui/functions/{}/{}",
                            function.namespace, function.name
                        )),
                        result: Ok(done),
                    });
                    continue;
                }
                Err(e) => Err(e.to_string()),
            },
        };
        outcomes.push(Outcome {
            name: name.clone(),
            href: None,
            result,
        });
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    let status = if failed == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let report = stack_report(&outcomes, &warnings);
    Ok(render(
        &viewer,
        &offer,
        &DeployForm::default(),
        &Problems::default(),
        text,
        Some(report),
        status,
    ))
}

/// One function of a stack: updated if it exists, else deployed (as `sluice deploy` does).
async fn stack_function(
    state: &AppState,
    deployment: FunctionDeployment,
) -> Result<(FunctionRef, Done), ApiError> {
    let function = FunctionRef::parse(&deployment.service, deployment.namespace.as_deref())?;
    let exists = state.functions.get(&function).await?.is_some();
    upsert(state, deployment, exists).await
}

fn stack_report(outcomes: &[Outcome], warnings: &[String]) -> Markup {
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    html! {
        section #stack-results aria-labelledby="stack-results-heading" {
            h2 #stack-results-heading { "What the stack did" }
            @if failed == 0 {
                (notice(&format!("All {} functions were deployed or updated.", outcomes.len()), false))
            } @else {
                (notice(&format!("{failed} of {} functions failed: see each below.", outcomes.len()), true))
            }
            div.table-wrap { table {
                thead { tr { th scope="col" { "Function" } th scope="col" { "Outcome" } } }
                tbody {
                    @for o in outcomes {
                        tr data-function=(o.name) {
                            td { @match &o.href { Some(href) => a href=(href) { (o.name) }, None => (o.name) } }
                            td {
                                @match &o.result {
                                    Ok(Done::Deployed) => span.badge.ok data-outcome="deployed" { "deployed" },
                                    Ok(Done::Updated) => span.badge.ok data-outcome="updated" { "updated" },
                                    Err(e) => span.bad data-outcome="failed" { (e) },
                                }
                            }
                        }
                    }
                }
            } }
            @if !warnings.is_empty() {
                h3 { "Warnings" }
                ul #stack-warnings { @for w in warnings { li { (w) } } }
            }
        }
    }
}

/// A field's hint and error, for its `aria-describedby`.
struct FieldText<'a> {
    id: &'static str,
    hint: Option<&'static str>,
    error: Option<&'a str>,
}

impl<'a> FieldText<'a> {
    fn new(problems: &'a Problems, id: &'static str, hint: Option<&'static str>) -> Self {
        Self {
            id,
            hint,
            error: problems.fields.get(id).map(String::as_str),
        }
    }

    fn invalid(&self) -> Option<&'static str> {
        self.error.map(|_| "true")
    }

    fn described_by(&self) -> Option<String> {
        let ids: Vec<String> = [
            self.hint.map(|_| format!("{}-hint", self.id)),
            self.error.map(|_| format!("{}-error", self.id)),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!ids.is_empty()).then(|| ids.join(" "))
    }

    /// The hint and the error, below the field.
    fn below(&self) -> Markup {
        html! {
            @if let Some(hint) = self.hint { span.hint id=(format!("{}-hint", self.id)) { (hint) } }
            @if let Some(error) = self.error { span.error-text id=(format!("{}-error", self.id)) { (error) } }
        }
    }
}

/// A one-line text field.
fn text_field(
    problems: &Problems,
    id: &'static str,
    name: &'static str,
    label: &str,
    value: &str,
    hint: Option<&'static str>,
    placeholder: &str,
) -> Markup {
    let t = FieldText::new(problems, id, hint);
    html! {
        div.field {
            label for=(id) { (label) }
            input #(id) type="text" name=(name) value=(value) placeholder=(placeholder)
                autocomplete="off" spellcheck="false"
                aria-invalid=[t.invalid()] aria-describedby=[t.described_by()];
            (t.below())
        }
    }
}

fn textarea_field(
    problems: &Problems,
    id: &'static str,
    label: &str,
    value: &str,
    hint: Option<&'static str>,
    rows: u32,
) -> Markup {
    let t = FieldText::new(problems, id, hint);
    html! {
        div.field {
            label for=(id) { (label) }
            textarea #(id) name=(id) rows=(rows) spellcheck="false"
                aria-invalid=[t.invalid()] aria-describedby=[t.described_by()] { (value) }
            (t.below())
        }
    }
}

fn checkbox(problems: &Problems, id: &'static str, label: &str, checked: bool) -> Markup {
    let t = FieldText::new(problems, id, None);
    html! {
        div.field {
            label {
                input #(id) type="checkbox" name=(id.replace('-', "_")) checked[checked]
                    aria-invalid=[t.invalid()] aria-describedby=[t.described_by()];
                " " (label)
            }
            (t.below())
        }
    }
}

const SCALE_TYPES: [(&str, &str); 4] = [
    ("", "Default (rps)"),
    ("rps", "rps: requests per second"),
    ("capacity", "capacity: requests in flight"),
    ("cpu", "cpu: millicores (HTTP mode only)"),
];

fn function_form(viewer: &Viewer, offer: &Offer, form: &DeployForm, p: &Problems) -> Markup {
    let template = form.template() && !offer.templates.is_empty();
    let lang = FieldText::new(p, "lang", None);
    let scale_type = FieldText::new(p, "scale-type", None);
    html! {
        section aria-labelledby="one-heading" {
            h2 #one-heading { "One function" }
            form.stack #deploy-form method="post" action="/ui/deploy" novalidate {
                (csrf_field(viewer))
                div.row.fields {
                    (text_field(p, "name", "name", "Name", &form.name, Some("lower-case letters, digits and '-'"), "hello"))
                    (text_field(p, "namespace", "namespace", "Namespace", &form.namespace, None, default_namespace()))
                }
                fieldset {
                    legend { "What runs" }
                    label { input type="radio" name="kind" value="process" #kind-process checked[!template]; " A command" }
                    div.choice {
                        (text_field(p, "command", "command", "Command", &form.command, Some("run once per request (body on stdin, answer on stdout), or a server on $PORT in HTTP mode"), "python3 -u handler.py"))
                        (text_field(p, "workdir", "workdir", "Working directory", &form.workdir, Some("optional: an absolute path on the gateway's machine"), "/srv/functions/hello"))
                        (checkbox(p, "http", "HTTP mode: the command is a server listening on $PORT", form.http.is_some()))
                    }
                    @if !offer.templates.is_empty() {
                        label { input type="radio" name="kind" value="template" #kind-template checked[template]; " An OpenFaaS template (lang:)" }
                        div.choice {
                            div.field {
                                label for="lang" { "Template" }
                                select #lang name="lang" aria-invalid=[lang.invalid()] aria-describedby=[lang.described_by()] {
                                    @for t in &offer.templates {
                                        option value=(t) selected[form.lang == *t] { (t) }
                                    }
                                }
                                (lang.below())
                            }
                            (text_field(p, "handler", "handler", "Handler directory", &form.handler, Some("an absolute path on the gateway's machine"), "/srv/functions/hello"))
                        }
                    } @else if let Some(error) = lang.error {
                        span.error-text #lang-error { (error) }
                    }
                }
                (text_field(p, "image", "image", "Image", &form.image, Some("optional: recorded, and what Kubernetes runs"), ""))
                (textarea_field(p, "env", "Environment", &form.env, Some("one KEY=value a line"), 3))
                (textarea_field(p, "labels", "Labels", &form.labels, Some("one key=value a line, such as com.sluice.rate-limit=50"), 3))
                (text_field(p, "secrets", "secrets", "Secrets", &form.secrets, Some("names of secrets in the namespace, separated by commas or spaces; their values are set on the secrets API"), "api-key"))
                fieldset {
                    legend { "Scaling" span.hint { " (empty: the defaults)" } }
                    div.row.fields {
                        (text_field(p, "scale-min", "scale_min", "Minimum replicas", &form.scale_min, None, "1"))
                        (text_field(p, "scale-max", "scale_max", "Maximum replicas", &form.scale_max, None, "20"))
                        (text_field(p, "scale-target", "scale_target", "Target per replica", &form.scale_target, None, "5"))
                        div.field {
                            label for="scale-type" { "Scale on" }
                            select #scale-type name="scale_type" aria-invalid=[scale_type.invalid()] aria-describedby=[scale_type.described_by()] {
                                @for (value, label) in SCALE_TYPES {
                                    option value=(value) selected[form.scale_type == value] { (label) }
                                }
                            }
                            (scale_type.below())
                        }
                    }
                    (checkbox(p, "scale-zero", "Scale to zero when idle", form.scale_zero.is_some()))
                }
                (checkbox(p, "replace", "Replace it if it exists", form.replace.is_some()))
                div { button type="submit" #deploy { "Deploy" } }
            }
        }
    }
}

fn stack_form(viewer: &Viewer, stack: &str, p: &Problems) -> Markup {
    html! {
        section aria-labelledby="stack-heading" {
            h2 #stack-heading { "From a stack.yml" }
            form.stack #stack-form method="post" action="/ui/deploy/stack" novalidate {
                (csrf_field(viewer))
                div.field {
                    label for="stack-file" { "Stack file" span.hint { " (fills the text below)" } }
                    input #stack-file type="file" data-fill="stack" accept=".yml,.yaml,text/yaml,application/yaml";
                }
                (textarea_field(p, "stack", "stack.yml", stack, Some("each function is deployed, or updated if it exists. Handler paths must be absolute on the gateway's machine; environment_file is not read; provider.gateway is ignored (this gateway deploys). At most 100 functions."), 12))
                div { button type="submit" #deploy-stack { "Deploy the stack" } }
            }
        }
    }
}

fn render(
    viewer: &Viewer,
    offer: &Offer,
    form: &DeployForm,
    problems: &Problems,
    stack: &str,
    report: Option<Markup>,
    status: StatusCode,
) -> Response {
    let body = html! {
        @if let Some(message) = &problems.notice { (notice(message, true)) }
        @if !problems.fields.is_empty() {
            (notice("The deployment was not made: see the fields marked below.", true))
        }
        @if let Some(report) = report { (report) }
        (function_form(viewer, offer, form, problems))
        (stack_form(viewer, stack, problems))
    };
    (status, layout::page(viewer, Nav::Deploy, "Deploy", body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            templates: vec!["python3-http", "node20"],
            max_replicas: 10,
        }
    }

    fn form(pairs: &[(&str, &str)]) -> DeployForm {
        let body = serde_urlencoded::to_string(pairs).unwrap();
        serde_urlencoded::from_str(&body).unwrap()
    }

    fn errors(p: Problems) -> Vec<(&'static str, String)> {
        p.fields.into_iter().collect()
    }

    #[test]
    fn a_good_form_becomes_the_deployment_the_api_takes() {
        let f = form(&[
            ("_csrf", "x"),
            ("name", " hello "),
            ("namespace", ""),
            ("kind", "process"),
            ("command", "python3 -u echo.py"),
            ("workdir", "/srv/fns"),
            ("http", "on"),
            (
                "env",
                "GREETING=hi there\r\n# a comment\n\nEMPTY=\nURL=a=b\n",
            ),
            (
                "labels",
                "team=a\ncom.sluice.rate-limit=50\nexample.com/owner=me",
            ),
            ("secrets", "api-key, db  other,api-key"),
            ("scale_min", "2"),
            ("scale_max", "5"),
            ("scale_target", "2.5"),
            ("scale_type", "capacity"),
            ("scale_zero", "on"),
        ]);
        let (function, d) = parse(&f, &offer()).unwrap();
        assert_eq!(function.to_string(), "hello");
        assert_eq!(d.service, "hello");
        assert_eq!(d.namespace.as_deref(), Some(default_namespace()));
        assert_eq!(d.env_process.as_deref(), Some("python3 -u echo.py"));
        assert_eq!(d.annotation(WORKDIR_ANNOTATION), Some("/srv/fns"));
        assert_eq!(d.env_vars["mode"], "http");
        assert_eq!(d.env_vars["GREETING"], "hi there");
        assert_eq!(d.env_vars["EMPTY"], "");
        assert_eq!(d.env_vars["URL"], "a=b");
        assert_eq!(d.env_vars.len(), 4);
        assert_eq!(d.secrets, ["api-key", "db", "other"]);
        assert_eq!(d.label("team"), Some("a"));
        assert_eq!(d.label("example.com/owner"), Some("me"));
        assert_eq!(d.label(SCALE_MIN_LABEL), Some("2"));
        assert_eq!(d.label(SCALE_MAX_LABEL), Some("5"));
        assert_eq!(d.label(SCALE_TARGET_LABEL), Some("2.5"));
        assert_eq!(d.label(SCALE_TYPE_LABEL), Some("capacity"));
        assert_eq!(d.label(SCALE_ZERO_LABEL), Some("true"));
        // What the API reads of it is what was asked.
        let config = sluice_core::FunctionConfig::from_deployment(&d).unwrap();
        assert_eq!((config.scale.min, config.scale.max), (2, 5));
        assert!(config.scale.zero);
        assert_eq!(config.mode, sluice_core::Mode::Http);
    }

    #[test]
    fn a_template_names_its_lang_and_handler_directory() {
        let f = form(&[
            ("name", "greet"),
            ("namespace", "dev"),
            ("kind", "template"),
            ("command", "ignored"),
            ("lang", "node20"),
            ("handler", "/srv/greet"),
        ]);
        let (function, d) = parse(&f, &offer()).unwrap();
        assert_eq!(function.to_string(), "greet.dev");
        assert_eq!(d.env_process, None);
        assert_eq!(d.annotation(LANG_ANNOTATION), Some("node20"));
        assert_eq!(d.annotation(WORKDIR_ANNOTATION), Some("/srv/greet"));
        let none = Offer {
            templates: vec![],
            ..offer()
        };
        assert_eq!(
            errors(parse(&f, &none).unwrap_err()),
            [(
                "lang",
                "this gateway's provider runs no templates: give the function a command".into()
            )]
        );
        let f = form(&[("name", "greet"), ("kind", "template"), ("lang", "ruby")]);
        let e = errors(parse(&f, &offer()).unwrap_err());
        assert_eq!(e[0].0, "handler");
        assert!(e[0].1.contains("absolute path"), "{e:?}");
        assert_eq!(
            e[1],
            (
                "lang",
                "choose one of the templates: python3-http, node20".into()
            )
        );
    }

    #[test]
    fn each_field_says_what_is_wrong_with_it() {
        let f = form(&[
            ("name", "Bad_Name"),
            ("namespace", "Dev"),
            ("command", ""),
            ("workdir", "fns"),
            ("http", "on"),
            ("env", "mode=classic"),
            ("labels", "bad key=x"),
            ("secrets", "ok, Not_OK"),
            ("scale_min", "0"),
            ("scale_max", "eleven"),
            ("scale_target", "-1"),
            ("scale_type", "memory"),
        ]);
        let e: BTreeMap<_, _> = parse(&f, &offer()).unwrap_err().fields;
        let fields: Vec<_> = e.keys().copied().collect();
        assert_eq!(
            fields,
            [
                "command",
                "env",
                "labels",
                "name",
                "namespace",
                "scale-max",
                "scale-min",
                "scale-target",
                "scale-type",
                "secrets",
                "workdir"
            ]
        );
        assert!(e["name"].contains(r#"function name "Bad_Name" is not a valid DNS-1123 label"#));
        assert!(e["env"].contains("HTTP mode is ticked"), "{}", e["env"]);
        assert!(e["labels"].contains("space"), "{}", e["labels"]);
        assert!(e["secrets"].contains(r#""Not_OK""#), "{}", e["secrets"]);
        assert!(
            e["scale-min"].contains("tick scale to zero"),
            "{}",
            e["scale-min"]
        );
        assert!(
            e["scale-max"].contains("not a whole number"),
            "{}",
            e["scale-max"]
        );
        // Above the gateway's ceiling, a minimum above the maximum, a label the scaling fields
        // also set.
        let f = form(&[
            ("name", "f"),
            ("command", "cat"),
            ("scale_min", "4"),
            ("scale_max", "11"),
            ("labels", "com.openfaas.scale.min=1"),
        ]);
        let e = parse(&f, &offer()).unwrap_err().fields;
        assert!(e["scale-max"].contains("at most 10"), "{e:?}");
        assert!(e["labels"].contains("set in the scaling fields"), "{e:?}");
        let f = form(&[
            ("name", "f"),
            ("command", "cat"),
            ("scale_min", "4"),
            ("scale_max", "3"),
        ]);
        let e = parse(&f, &offer()).unwrap_err().fields;
        assert_eq!(e["scale-min"], "is above the maximum (3)");
    }

    #[test]
    fn key_value_lines_are_read_or_refused_naming_the_line() {
        assert_eq!(
            pairs("A=1\n\n  B = two words \n", "variable").unwrap(),
            BTreeMap::from([
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), " two words ".to_owned())
            ])
        );
        for (text, needle) in [
            ("A=1\nnope", r#"line 2 ("nope") is not KEY=value"#),
            ("=1", "line 1 has no variable name"),
            ("A=1\nA=2", "line 2 sets A again (line 1 set it first)"),
            ("A B=1", "space"),
        ] {
            let e = pairs(text, "variable").unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn label_keys_are_kubernetes_qualified_names() {
        for ok in [
            "team",
            "com.openfaas.scale.min",
            "example.com/owner",
            "a_b-c.d",
            "A1",
        ] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a b",
            "a/",
            "/a",
            "Example.com/a",
            "a/b/c",
            &"a".repeat(64),
            "é",
        ] {
            assert!(label_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_names_split_on_commas_and_spaces() {
        assert_eq!(secret_names(" a,b  c,,a ").unwrap(), ["a", "b", "c"]);
        assert!(secret_names("").unwrap().is_empty());
        assert!(secret_names("a,B").unwrap_err().contains("\"B\""));
    }

    #[test]
    fn a_deploys_error_goes_to_the_field_its_words_name() {
        for (message, template, field) in [
            (
                "function f names secrets that do not exist in namespace openfaas-fn: a",
                false,
                Some("secrets"),
            ),
            (
                "the command's program \"nope\" was not found: no executable of that name",
                false,
                Some("command"),
            ),
            (
                "envProcess (or envVars.fprocess) is required: the process provider runs it",
                false,
                Some("command"),
            ),
            (
                "annotation com.sluice.workdir \"/gone\" is not an existing absolute directory",
                false,
                Some("workdir"),
            ),
            (
                "annotation com.sluice.workdir \"/gone\" is not an existing absolute directory",
                true,
                Some("handler"),
            ),
            (
                "lang \"node20\" needs Node.js on the Sluice host: node was not found",
                true,
                Some("lang"),
            ),
            (
                "label com.openfaas.scale.max (30) is above this gateway's limit of 20 replicas",
                false,
                Some("scale-max"),
            ),
            (
                "label com.openfaas.scale.type cpu needs an HTTP-mode function",
                false,
                Some("scale-type"),
            ),
            (
                "label com.openfaas.scale.zero-duration must be at least 1s",
                false,
                Some("labels"),
            ),
            (
                "label com.sluice.rate-limit must be a number of requests per second",
                false,
                Some("labels"),
            ),
            (
                "envVars.exec_timeout \"x\" is not a duration",
                false,
                Some("env"),
            ),
            (
                "image is 2000 bytes; at most 1024 are taken",
                false,
                Some("image"),
            ),
            (
                "the call store is unavailable; try again shortly",
                false,
                None,
            ),
        ] {
            assert_eq!(field_of(message, template), field, "{message}");
        }
    }

    #[test]
    fn a_pasted_stack_takes_absolute_handlers_and_reads_no_file() {
        let stack = Stack::parse(
            "functions:\n  a:\n    fprocess: cat\n    handler: /srv/a\n  \
             b:\n    fprocess: cat\n    handler: ./b\n  \
             c:\n    fprocess: cat\n    environment_file: [/etc/hostname]\n",
        )
        .unwrap();
        let a = stack.functions["a"].deployment("a", &PastedPaths).unwrap();
        assert_eq!(a.annotation(WORKDIR_ANNOTATION), Some("/srv/a"));
        let b = stack.functions["b"]
            .deployment("b", &PastedPaths)
            .unwrap_err()
            .to_string();
        assert!(
            b.starts_with(
                "handler directory ./b of function b: handler paths must be absolute on the \
                 gateway's machine"
            ),
            "{b}"
        );
        let c = stack.functions["c"]
            .deployment("c", &PastedPaths)
            .unwrap_err()
            .to_string();
        assert!(c.contains("the portal reads no files"), "{c}");
    }
}
