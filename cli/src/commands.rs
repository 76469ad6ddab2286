//! The client commands: each one request or a few to the gateway, and output a person can read.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use reqwest::Method;
use sluice_core::{FunctionDeployment, FunctionStatus, LogLine};

use crate::GatewayArg;
use crate::client::{self, Client, resolve_gateway};

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not 'Name: value'"))
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Stack file in OpenFaaS's schema; deploys every function in it. Without -f (and without
    /// --name): ./stack.yml, else ./stack.yaml.
    #[arg(short = 'f', long = "yaml", conflicts_with_all = ["name", "image", "fprocess"])]
    pub file: Option<PathBuf>,
    /// Deploy only these functions of the stack file.
    #[arg(long, conflicts_with = "name")]
    pub filter: Vec<String>,
    /// Function name (deploys one function from flags, with --fprocess).
    #[arg(long, requires = "fprocess")]
    pub name: Option<String>,
    /// Image, recorded for OpenFaaS parity.
    #[arg(long, requires = "name")]
    pub image: Option<String>,
    /// The command: run per request, or as a server on $PORT with --env mode=http.
    #[arg(long, requires = "name")]
    pub fprocess: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_pair)]
    pub env: Vec<(String, String)>,
    /// Label, KEY=VALUE (repeatable), e.g. com.openfaas.scale.min=2.
    #[arg(long = "label", short = 'l', value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Annotation, KEY=VALUE (repeatable).
    #[arg(long = "annotation", value_parser = parse_pair)]
    pub annotations: Vec<(String, String)>,
    /// How long to wait for every function deployed to be ready before failing.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Return once the gateway has taken the deployments, without waiting for readiness.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

/// The stack files `sluice deploy` reads when given neither -f nor --name, in order (as
/// faas-cli does).
pub const DEFAULT_STACK_FILES: [&str; 2] = ["stack.yml", "stack.yaml"];

/// `./stack.yml`, else `./stack.yaml`.
fn default_stack_file() -> anyhow::Result<PathBuf> {
    DEFAULT_STACK_FILES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no stack file: neither ./{} nor ./{} exists here; name one with -f, or deploy \
                 one function with --name and --fprocess",
                DEFAULT_STACK_FILES[0],
                DEFAULT_STACK_FILES[1]
            )
        })
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    // Functions whose settings local processes do not honour, told once the provider is known.
    let mut unhonoured: Vec<(String, Vec<&'static str>)> = Vec::new();
    let file = match (&args.file, &args.name) {
        (Some(path), _) => Some(path.clone()),
        (None, None) => Some(default_stack_file()?),
        (None, Some(_)) => None,
    };
    let (deployments, stack_gateway) = match &file {
        Some(path) => {
            let stack = crate::stack::load(path)?;
            for warning in stack.warnings() {
                eprintln!("warning: {}: {warning}", path.display());
            }
            let dir = path.parent().map(PathBuf::from).unwrap_or_default();
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            for wanted in &args.filter {
                anyhow::ensure!(
                    stack.functions.contains_key(wanted),
                    "{} has no function {wanted}",
                    path.display()
                );
            }
            let deployments = stack
                .functions
                .iter()
                .filter(|(name, _)| args.filter.is_empty() || args.filter.contains(name))
                .map(|(name, f)| {
                    let fields = f.unhonoured_locally();
                    if !fields.is_empty() {
                        unhonoured.push((name.clone(), fields));
                    }
                    crate::stack::deployment(f, name, &dir)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            (deployments, stack.provider.and_then(|p| p.gateway))
        }
        None => {
            let current_dir = std::env::current_dir()?.display().to_string();
            let mut annotations: BTreeMap<String, String> =
                args.annotations.iter().cloned().collect();
            annotations
                .entry(sluice_core::config::WORKDIR_ANNOTATION.to_owned())
                .or_insert(current_dir);
            let d = FunctionDeployment {
                service: args.name.clone().unwrap_or_default(),
                image: args.image.clone().unwrap_or_default(),
                namespace: args.namespace.clone(),
                env_process: args.fprocess.clone(),
                env_vars: args.env.iter().cloned().collect(),
                labels: Some(args.labels.iter().cloned().collect()),
                annotations: Some(annotations),
                ..Default::default()
            };
            (vec![d], None)
        }
    };
    // A gateway only the stack file names gets only credentials stored for it (Client::new).
    let client = Client::new(resolve_gateway(
        args.gateway.gateway.as_deref(),
        stack_gateway.as_deref(),
    ))?;
    report_unhonoured(&client, &unhonoured).await;
    let mut failed = 0;
    let mut deployed = Vec::with_capacity(deployments.len());
    for d in deployments {
        match deploy_one(&client, &d).await {
            Ok(verb) => {
                println!("{verb} {}.", d.service);
                deployed.push((d.service.clone(), d.namespace.clone()));
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e:#}", d.service);
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} function(s) failed to deploy");
    if args.no_wait || deployed.is_empty() {
        return Ok(());
    }
    let terminal = std::io::stdout().is_terminal();
    let not_ready = crate::readiness::wait_ready(&client, deployed, args.timeout, terminal).await?;
    for (name, why) in &not_ready {
        eprintln!("{name}: {why}");
    }
    anyhow::ensure!(
        not_ready.is_empty(),
        "{} function(s) did not become ready: {}",
        not_ready.len(),
        not_ready
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Says, once per function, which of its settings the gateway's provider will not honour
/// when it runs functions as local processes (Kubernetes honours them all).
async fn report_unhonoured(client: &Client, unhonoured: &[(String, Vec<&'static str>)]) {
    if unhonoured.is_empty() {
        return;
    }
    let info: Option<serde_json::Value> = match client
        .send(client.request(Method::GET, "/system/info"))
        .await
    {
        Ok(r) if r.status().is_success() => r.json().await.ok(),
        _ => None,
    };
    let orchestration = info
        .as_ref()
        .and_then(|i| i["provider"]["orchestration"].as_str());
    if orchestration != Some("process") {
        return;
    }
    for (name, fields) in unhonoured {
        eprintln!(
            "warning: function {name}: {} {} not honoured for functions run as local processes \
             (Kubernetes honours them)",
            fields.join(", "),
            if fields.len() == 1 { "is" } else { "are" }
        );
    }
}

/// PUT to update, POST on 404 to create: what faas-cli does.
async fn deploy_one(client: &Client, d: &FunctionDeployment) -> anyhow::Result<&'static str> {
    let response = client
        .send(client.request(Method::PUT, "/system/functions").json(d))
        .await?;
    if response.status().is_success() {
        return Ok("Updated");
    }
    if !client::is_not_found(response.status()) {
        return Err(client::error_of(response).await);
    }
    client
        .expect_ok(client.request(Method::POST, "/system/functions").json(d))
        .await?;
    Ok("Deployed")
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Print the functions as the gateway gives them, as a JSON array.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let client = Client::new(resolve_gateway(args.gateway.gateway.as_deref(), None))?;
    let mut request = client.request(Method::GET, "/system/functions");
    if let Some(ns) = &args.namespace {
        request = request.query(&[("namespace", ns)]);
    }
    let functions: Vec<FunctionStatus> = client::json(client.expect_ok(request).await?).await?;
    if args.json {
        return print_json(&functions);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<30} {:>12} {:>10}  {:<14} Command",
        "Function", "Invocations", "Replicas", "Status"
    )?;
    for f in functions {
        writeln!(
            out,
            "{:<30} {:>12} {:>10}  {:<14} {}",
            f.name,
            f.invocation_count,
            format!("{}/{}", f.available_replicas, f.replicas),
            status_word(&f),
            f.env_process.as_deref().unwrap_or_default()
        )?;
        if let Some(c) = &f.crash_loop {
            let last = c.last_line().unwrap_or("(no output)");
            writeln!(out, "  {} {}; last log line: {last}", f.name, c.exit)?;
        }
    }
    Ok(())
}

/// One word for where a function stands.
fn status_word(f: &FunctionStatus) -> &'static str {
    if f.available_replicas > 0 {
        "Ready"
    } else if f.crash_loop.is_some() {
        "Crash-looping"
    } else if f.replicas == 0 {
        "At zero"
    } else {
        "Not Ready"
    }
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// Function name (name or name.namespace).
    pub name: String,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub function: NameArgs,
    /// Print the function as the gateway gives it, as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<()> {
    let DescribeArgs {
        function: args,
        json,
    } = args;
    let client = Client::new(resolve_gateway(args.gateway.gateway.as_deref(), None))?;
    let mut request = client.request(Method::GET, &format!("/system/function/{}", args.name));
    if let Some(ns) = &args.namespace {
        request = request.query(&[("namespace", ns)]);
    }
    let f: FunctionStatus = client::json(client.expect_ok(request).await?).await?;
    if json {
        return print_json(&f);
    }
    println!("Name:               {}", f.name);
    println!(
        "Namespace:          {}",
        f.namespace.as_deref().unwrap_or_default()
    );
    println!("Status:             {}", status_word(&f));
    if let Some(problem) = &f.problem {
        println!("Problem:            {problem}");
    }
    if let Some(c) = &f.crash_loop {
        println!(
            "Last exit:          {} ({} times in a row)",
            c.exit, c.exits
        );
        if !c.last_lines.is_empty() {
            println!("Last output:");
            for line in &c.last_lines {
                println!("  {line}");
            }
        }
    }
    println!("Replicas:           {}", f.replicas);
    println!("Available replicas: {}", f.available_replicas);
    println!("Invocations:        {}", f.invocation_count);
    println!("Image:              {}", f.image);
    println!("Command:            {}", f.env_process.unwrap_or_default());
    println!("URL:                {}/function/{}", client.base, f.name);
    println!(
        "Async URL:          {}/async-function/{}",
        client.base, f.name
    );
    for (title, map) in [
        ("Environment", Some(f.env_vars)),
        ("Labels", f.labels),
        ("Annotations", f.annotations),
    ] {
        let map = map.unwrap_or_default();
        if !map.is_empty() {
            println!("{title}:");
            for (k, v) in map {
                println!("  {k}: {v}");
            }
        }
    }
    Ok(())
}

pub async fn remove(args: NameArgs) -> anyhow::Result<()> {
    let client = Client::new(resolve_gateway(args.gateway.gateway.as_deref(), None))?;
    let body = serde_json::json!({ "functionName": args.name, "namespace": args.namespace });
    client
        .expect_ok(
            client
                .request(Method::DELETE, "/system/functions")
                .json(&body),
        )
        .await?;
    println!("Removed {}.", args.name);
    Ok(())
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Function name (name or name.namespace).
    pub name: String,
    /// Path below the function, e.g. /items/1.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Queue the call and return at once with its id.
    #[arg(long = "async", short = 'a')]
    pub is_async: bool,
    /// With --async: where to POST the result.
    #[arg(long, requires = "is_async")]
    pub callback_url: Option<String>,
    /// Request header, 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// HTTP method.
    #[arg(long, short = 'm', default_value = "POST")]
    pub method: String,
    /// Query parameter, KEY=VALUE (repeatable).
    #[arg(long = "query", short = 'q', value_parser = parse_pair)]
    pub query: Vec<(String, String)>,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

pub async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let client = Client::new(resolve_gateway(args.gateway.gateway.as_deref(), None))?;
    let method = Method::from_bytes(args.method.to_uppercase().as_bytes())
        .map_err(|_| anyhow::anyhow!("--method {:?} is not an HTTP method", args.method))?;
    let mut body = Vec::new();
    if std::io::stdin().is_terminal() {
        eprintln!("Reading from STDIN - hit (Control + D) to stop.");
    }
    std::io::stdin()
        .read_to_end(&mut body)
        .context("reading the body from stdin")?;
    let route = if args.is_async {
        "async-function"
    } else {
        "function"
    };
    let path = if args.path.is_empty() || args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let mut request = client
        .request(method, &format!("/{route}/{}{path}", args.name))
        .body(body);
    if !args.query.is_empty() {
        request = request.query(&args.query);
    }
    if !args
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("content-type", "text/plain");
    }
    for (k, v) in &args.headers {
        request = request.header(k, v);
    }
    if let Some(url) = &args.callback_url {
        request = request.header(sluice_core::headers::CALLBACK_URL, url);
    }
    // A function sees the caller's credentials only if it asks for them: the first try goes
    // without, and only a function that requires them (Sluice's own 401) gets a second.
    let again = request.try_clone();
    let mut response = client.send(request).await?;
    let sluice_refused = response.status() == reqwest::StatusCode::UNAUTHORIZED
        && response
            .headers()
            .get(sluice_core::PLATFORM_ERROR_HEADER)
            .is_some_and(|v| v == "unauthorized");
    if let Some(again) = again.filter(|_| sluice_refused && client.has_credentials())
        && requires_credentials(&client, &args.name).await
    {
        response = client.send(client.with_credentials(again)).await?;
    }
    let status = response.status();
    if args.is_async {
        if status != reqwest::StatusCode::ACCEPTED {
            return Err(client::error_of(response).await);
        }
        let id = response
            .headers()
            .get(sluice_core::headers::CALL_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        println!("Function submitted asynchronously.");
        println!("Call id: {id}");
        println!("Follow it with: sluice call show {id}");
        return Ok(());
    }
    let platform_error = response
        .headers()
        .contains_key(sluice_core::PLATFORM_ERROR_HEADER);
    if platform_error {
        return Err(client::error_of(response).await);
    }
    let bytes = response
        .bytes()
        .await
        .context("reading the function's response")?;
    std::io::stdout().write_all(&bytes)?;
    anyhow::ensure!(status.is_success(), "function answered {status}");
    Ok(())
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Function name (name or name.namespace).
    pub name: String,
    /// Show only the last N lines.
    #[arg(long, short = 't')]
    pub tail: Option<u32>,
    /// Keep printing new lines as they come.
    #[arg(long)]
    pub follow: bool,
    /// Print each line as the gateway gives it: one JSON object a line (NDJSON).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = Client::new(resolve_gateway(args.gateway.gateway.as_deref(), None))?;
    let mut query = vec![
        ("name", args.name.clone()),
        ("follow", args.follow.to_string()),
    ];
    if let Some(tail) = args.tail {
        query.push(("tail", tail.to_string()));
    }
    let response = client
        .expect_ok(client.request(Method::GET, "/system/logs").query(&query))
        .await?;
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.context("the log stream broke off")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(&l)?)?;
                    out.flush()?;
                    continue;
                }
                writeln!(
                    out,
                    "{} {} {}",
                    l.timestamp.to_rfc3339(),
                    l.instance,
                    l.text
                )?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Function name (name or name.namespace).
    pub name: String,
    /// The replica count to set.
    #[arg(long, short = 'r')]
    pub replicas: u32,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let client = Client::new(resolve_gateway(args.gateway.gateway.as_deref(), None))?;
    let body = serde_json::json!({ "serviceName": args.name, "replicas": args.replicas });
    client
        .expect_ok(
            client
                .request(
                    Method::POST,
                    &format!("/system/scale-function/{}", args.name),
                )
                .json(&body),
        )
        .await?;
    println!("Scaled {} to {} replica(s).", args.name, args.replicas);
    Ok(())
}

/// Prints `value` as pretty JSON on stdout (what `--json` does).
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Whether the gateway says `name` requires credentials (its `com.sluice.auth` label). Asked of
/// the management API, not taken from the function's answer: a function could fake Sluice's
/// 401 to be sent the credentials.
async fn requires_credentials(client: &Client, name: &str) -> bool {
    let request = client.request(Method::GET, &format!("/system/function/{name}"));
    let Ok(response) = client.send(request).await else {
        return false;
    };
    if !response.status().is_success() {
        return false;
    }
    client::json::<FunctionStatus>(response)
        .await
        .ok()
        .and_then(|f| f.labels)
        .and_then(|labels| labels.get(sluice_gateway::AUTH_LABEL).cloned())
        .is_some_and(|v| v.trim() == "required")
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The admin's user name.
    #[arg(long, short = 'u', default_value = "admin")]
    pub username: String,
    /// The password (prefer --password-stdin: a flag shows in the process list and history).
    #[arg(long, short = 'p', conflicts_with_all = ["password_stdin", "token"])]
    pub password: Option<String>,
    /// Read the password from stdin.
    #[arg(long, conflicts_with = "token")]
    pub password_stdin: bool,
    /// Log in with a bearer API token instead (read from stdin if the value is "-").
    #[arg(long)]
    pub token: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

/// Checks the credentials against the gateway, then stores them for it (as `faas-cli login`).
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    use crate::login::Credentials;
    let base = resolve_gateway(args.gateway.gateway.as_deref(), None).validated()?;
    let read_stdin = || -> anyhow::Result<String> {
        let mut line = String::new();
        std::io::stdin()
            .read_to_string(&mut line)
            .context("reading stdin")?;
        Ok(line.trim().to_owned())
    };
    let credentials = match (&args.token, &args.password, args.password_stdin) {
        (Some(token), _, _) => Credentials::Token(if token == "-" {
            read_stdin()?
        } else {
            token.clone()
        }),
        (None, Some(password), _) => Credentials::Basic {
            user: args.username.clone(),
            password: password.trim().to_owned(),
        },
        (None, None, true) => Credentials::Basic {
            user: args.username.clone(),
            password: read_stdin()?,
        },
        (None, None, false) => {
            anyhow::bail!("give the password with --password-stdin (or a token with --token)")
        }
    };
    match &credentials {
        Credentials::Basic { password, .. } | Credentials::Token(password) => {
            anyhow::ensure!(!password.is_empty(), "the password or token is empty");
        }
    }
    let client = Client::with(base.clone(), Some(credentials.clone()));
    let response = client
        .send(client.request(Method::GET, "/system/functions"))
        .await?;
    match response.status() {
        s if s.is_success() => {}
        reqwest::StatusCode::UNAUTHORIZED => {
            anyhow::bail!("unable to log in to {base}: the user name or password is not right")
        }
        _ => return Err(client::error_of(response).await),
    }
    let path = crate::login::store(&base, credentials)?;
    println!("Credentials saved for {base} in {}.", path.display());
    Ok(())
}

/// Forgets the stored credentials for a gateway.
pub async fn logout(args: GatewayArg) -> anyhow::Result<()> {
    let base = resolve_gateway(args.gateway.as_deref(), None).validated()?;
    if crate::login::forget(&base)? {
        println!("Credentials for {base} removed.");
    } else {
        println!("No credentials were stored for {base}.");
    }
    Ok(())
}
