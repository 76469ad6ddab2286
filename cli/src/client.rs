//! A small client for the gateway's API that turns failures into messages a person can act on.

use anyhow::Context;
use reqwest::{Method, Response, StatusCode};

use crate::login::Credentials;

/// Where the gateway URL a client command uses came from: named in its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewaySource {
    Flag,
    SluiceUrl,
    OpenfaasUrl,
    StackFile,
    Default,
}

impl std::fmt::Display for GatewaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flag => "--gateway",
            Self::SluiceUrl => "SLUICE_URL",
            Self::OpenfaasUrl => "OPENFAAS_URL",
            Self::StackFile => "the stack file's provider.gateway",
            Self::Default => "the default gateway",
        })
    }
}

/// The gateway a client command talks to: its URL (with `http://` added when the scheme is
/// missing) and where it came from. A malformed one is kept with its problem, which
/// [`Client::new`] reports.
#[derive(Debug, Clone)]
pub struct Gateway {
    url: String,
    source: GatewaySource,
    problem: Option<String>,
}

impl Gateway {
    /// The gateway named by `value`, from `source`.
    pub fn from_source(value: &str, source: GatewaySource) -> Self {
        match normalise_gateway_url(value) {
            Ok(url) => Self {
                url,
                source,
                problem: None,
            },
            Err(problem) => Self {
                url: value.trim().to_owned(),
                source,
                problem: Some(problem),
            },
        }
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn source(&self) -> GatewaySource {
        self.source
    }

    /// The URL, or a one-line error naming the flag or variable it came from.
    pub fn validated(&self) -> anyhow::Result<String> {
        match &self.problem {
            None => Ok(self.url.clone()),
            Some(problem) => Err(ClientError::BadUrl {
                source_name: self.source.to_string(),
                value: self.url.clone(),
                problem: problem.clone(),
            }
            .into()),
        }
    }
}

impl PartialEq for Gateway {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl std::fmt::Display for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Where the CLI finds the gateway, in order: `--gateway`, `SLUICE_URL`, `OPENFAAS_URL`, the
/// stack file's `provider.gateway`, then the default.
pub fn resolve_gateway(flag: Option<&str>, stack_gateway: Option<&str>) -> Gateway {
    let from_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    choose_gateway(
        flag,
        from_env("SLUICE_URL"),
        from_env("OPENFAAS_URL"),
        stack_gateway,
    )
}

/// [`resolve_gateway`] with the environment's variables given.
fn choose_gateway(
    flag: Option<&str>,
    sluice_url: Option<String>,
    openfaas_url: Option<String>,
    stack_gateway: Option<&str>,
) -> Gateway {
    let (value, source) = flag
        .map(|f| (f.to_owned(), GatewaySource::Flag))
        .or_else(|| sluice_url.map(|v| (v, GatewaySource::SluiceUrl)))
        .or_else(|| openfaas_url.map(|v| (v, GatewaySource::OpenfaasUrl)))
        .or_else(|| {
            // A stack file naming the default gateway (as `sluice new` writes it) names no
            // other machine: it is the default, and gets the environment's credentials.
            stack_gateway
                .filter(|g| normalise_gateway_url(g).as_deref() != Ok(DEFAULT_GATEWAY))
                .map(|g| (g.to_owned(), GatewaySource::StackFile))
        })
        .unwrap_or_else(|| (DEFAULT_GATEWAY.to_owned(), GatewaySource::Default));
    Gateway::from_source(&value, source)
}

/// Where the CLI looks for a gateway when nothing names one.
const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// A gateway URL as the CLI uses it: `http://` when no scheme is given, no trailing slash.
/// Returns why it cannot be used otherwise, in a few plain words.
pub fn normalise_gateway_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    let (scheme, rest) = value.split_once("://").unwrap_or(("http", value));
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(if value.contains("://") {
            "it names no host"
        } else {
            "it is empty"
        }
        .to_owned());
    }
    let with_scheme = format!("{scheme}://{rest}");
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme is {:?}; use http:// or https://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it names no host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a gateway URL has no query or fragment".to_owned());
    }
    Ok(with_scheme)
}

/// What went wrong talking to the gateway, each said in one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway answered with an error: its own (`{"code", "message"}`) or another body.
    #[error("{message}")]
    Gateway {
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
    #[error(
        "cannot reach the gateway at {url}: {reason} (is sluice up running? set --gateway or \
         SLUICE_URL)"
    )]
    Unreachable { url: String, reason: String },
    #[error("the request to the gateway at {url} failed: {reason}")]
    Failed { url: String, reason: String },
    #[error("{source_name} {value:?} is not a gateway URL: {problem}")]
    BadUrl {
        source_name: String,
        value: String,
        problem: String,
    },
}

/// The status, where the message alone may not say enough: a server-side failure (5xx), or
/// a limit (429), where trying again may help.
fn status_note(status: StatusCode) -> String {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        format!(" (HTTP {})", status.as_u16())
    } else {
        String::new()
    }
}

/// A transport error's innermost cause, short: "connection refused", not the request's URL and
/// every layer around it.
fn short_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut deepest: &dyn std::error::Error = error;
    while let Some(next) = deepest.source() {
        deepest = next;
    }
    let text = deepest.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    one_line(&text.to_lowercase())
}

/// `text` on one line: runs of whitespace (newlines included) become one space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    /// Sent on management requests (`/system/...`) only: a function never sees them unless
    /// it asks for them (see [`Client::with_credentials`]).
    credentials: Option<Credentials>,
}

impl Client {
    /// A client for `gateway`, with the credentials stored or set for it (for a gateway a
    /// stack file named, only those stored for it: see [`Client::for_stack_gateway`]).
    pub fn new(gateway: Gateway) -> anyhow::Result<Self> {
        if gateway.source() == GatewaySource::StackFile {
            return Self::for_stack_gateway(gateway);
        }
        let base = gateway.validated()?;
        let credentials = crate::login::find(&base, true)?;
        Ok(Self::with(base, credentials))
    }

    /// A client for a gateway a stack file named: only credentials stored for it by
    /// `sluice login` (or `faas-cli login`) go there, never those in the environment.
    pub fn for_stack_gateway(gateway: Gateway) -> anyhow::Result<Self> {
        let base = gateway.validated()?;
        let credentials = crate::login::find(&base, false)?;
        Ok(Self::with(base, credentials))
    }

    /// A client for the gateway at `base` with exactly `credentials`.
    pub fn with(base: String, credentials: Option<Credentials>) -> Self {
        if credentials.is_some() && !encrypted_or_local(&base) {
            eprintln!(
                "WARNING: credentials are sent to {base} unencrypted; use https:// for a \
                 gateway on another machine"
            );
        }
        Self {
            base,
            http: reqwest::Client::new(),
            credentials,
        }
    }

    /// A request to `path`; one to the management API carries the credentials.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        if path.starts_with("/system/") {
            self.with_credentials(request)
        } else {
            request
        }
    }

    /// Adds the credentials (if any) to `request`: for a function that requires them.
    pub fn with_credentials(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some(credentials) => credentials.apply(request),
            None => request,
        }
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// Sends, naming the gateway when it cannot be reached.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        request.send().await.map_err(|e| {
            let url = self.base.clone();
            let reason = short_reason(&e);
            if e.is_connect() {
                ClientError::Unreachable { url, reason }.into()
            } else {
                ClientError::Failed { url, reason }.into()
            }
        })
    }

    /// Sends and insists on a success status, turning the gateway's JSON error into the message.
    pub async fn expect_ok(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        let response = self.send(request).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_of(response).await)
    }
}

/// Whether credentials sent to `base` are safe from the network: https, or loopback.
fn encrypted_or_local(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base) else {
        return false;
    };
    if url.scheme() == "https" {
        return true;
    }
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a response failed, from its `{"code", "message"}` body when it has one.
pub async fn error_of(response: Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    gateway_error(status, &body).into()
}

/// The error a response with `status` and `body` stands for, said in one line.
pub fn gateway_error(status: StatusCode, body: &str) -> ClientError {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v[name].as_str())
            .map(str::to_owned)
    };
    let code = field("code");
    let message = match field("message") {
        Some(message) if status == StatusCode::UNAUTHORIZED => format!(
            "{}: log in with `sluice login` (or set SLUICE_TOKEN)",
            one_line(&message)
        ),
        Some(message) => format!("{}{}", one_line(&message), status_note(status)),
        None if body.trim().is_empty() => format!("the gateway answered {status}"),
        None => format!(
            "the gateway answered {status}: {}",
            one_line(&truncated(body.trim(), 200))
        ),
    };
    ClientError::Gateway {
        status,
        code,
        message,
    }
}

/// At most `max` characters of `text`, marked when cut.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// Reads the JSON body of a successful response.
pub async fn json<T: serde::de::DeserializeOwned>(response: Response) -> anyhow::Result<T> {
    let status = response.status();
    response
        .json()
        .await
        .with_context(|| format!("the gateway's {status} answer is not the JSON expected"))
}

pub fn is_not_found(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_url_without_a_scheme_is_taken_as_http() {
        for (given, expected) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("localhost:8080", "http://localhost:8080"),
            ("gateway.example", "http://gateway.example"),
            ("[::1]:8080", "http://[::1]:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            (
                " https://gw.example/openfaas/ ",
                "https://gw.example/openfaas",
            ),
            ("HTTP://127.0.0.1:8080", "HTTP://127.0.0.1:8080"),
        ] {
            assert_eq!(
                normalise_gateway_url(given).as_deref(),
                Ok(expected),
                "{given}"
            );
        }
    }

    #[test]
    fn a_malformed_gateway_url_says_why_in_a_few_words() {
        for (given, why) in [
            ("", "it is empty"),
            ("/", "it is empty"),
            ("127.0.0.1:99999", "invalid port number"),
            (
                "ftp://gw.example",
                "the scheme is \"ftp\"; use http:// or https://",
            ),
            (
                "http://gw.example/?a=1",
                "a gateway URL has no query or fragment",
            ),
            ("http://", "it names no host"),
            ("http:///", "it names no host"),
        ] {
            let got = normalise_gateway_url(given).unwrap_err();
            assert!(got.contains(why), "{given}: {got}");
        }
    }

    #[test]
    fn a_stack_file_naming_the_default_gateway_names_no_other_machine() {
        let source = |stack: &str| choose_gateway(None, None, None, Some(stack)).source();
        assert_eq!(source("http://127.0.0.1:8080"), GatewaySource::Default);
        assert_eq!(source("127.0.0.1:8080/"), GatewaySource::Default);
        assert_eq!(source("http://gw.example:8080"), GatewaySource::StackFile);
        let env = choose_gateway(None, Some("http://x:1".into()), None, Some("http://y:2"));
        assert_eq!(env.source(), GatewaySource::SluiceUrl);
    }

    #[test]
    fn a_malformed_gateway_names_the_flag_or_variable_it_came_from() {
        let error = Gateway::from_source("127.0.0.1:99999", GatewaySource::SluiceUrl)
            .validated()
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "SLUICE_URL \"127.0.0.1:99999\" is not a gateway URL: invalid port number"
        );
        let error = Gateway::from_source("", GatewaySource::Flag)
            .validated()
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "--gateway \"\" is not a gateway URL: it is empty"
        );
        assert!(
            Gateway::from_source("127.0.0.1:8080", GatewaySource::Flag)
                .validated()
                .is_ok()
        );
    }

    #[test]
    fn a_gateway_error_is_its_message_on_one_line() {
        let body = r#"{"code":"function_not_found","message":"function nope is not deployed"}"#;
        let error = gateway_error(StatusCode::NOT_FOUND, body);
        assert_eq!(error.to_string(), "function nope is not deployed");
        assert!(
            matches!(&error, ClientError::Gateway { code: Some(c), .. } if c == "function_not_found")
        );
        // Where trying again may help, the status says so.
        let body = r#"{"code":"overloaded","message":"the gateway is at its limit\nof 5"}"#;
        assert_eq!(
            gateway_error(StatusCode::SERVICE_UNAVAILABLE, body).to_string(),
            "the gateway is at its limit of 5 (HTTP 503)"
        );
        let body = r#"{"code":"unauthorized","message":"credentials required"}"#;
        assert_eq!(
            gateway_error(StatusCode::UNAUTHORIZED, body).to_string(),
            "credentials required: log in with `sluice login` (or set SLUICE_TOKEN)"
        );
        assert_eq!(
            gateway_error(StatusCode::BAD_GATEWAY, "").to_string(),
            "the gateway answered 502 Bad Gateway"
        );
        let html = format!("<html>\n<body>{}</body>\n</html>", "x".repeat(500));
        let said = gateway_error(StatusCode::BAD_GATEWAY, &html).to_string();
        assert!(
            said.starts_with("the gateway answered 502 Bad Gateway: <html> <body>xxx"),
            "{said}"
        );
        assert!(
            !said.contains('\n') && said.ends_with("...") && said.len() < 300,
            "{said}"
        );
    }

    #[test]
    fn an_unreachable_gateway_says_where_and_what_to_do() {
        let error = ClientError::Unreachable {
            url: "http://127.0.0.1:9".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            error.to_string(),
            "cannot reach the gateway at http://127.0.0.1:9: connection refused (is sluice up \
             running? set --gateway or SLUICE_URL)"
        );
    }
}
