//! A small client for the gateway's API that turns failures into messages a person can act on.

use anyhow::Context;
use reqwest::{Method, Response, StatusCode};

use crate::login::Credentials;

/// Where the CLI finds the gateway, in order: `--gateway`, `SLUICE_URL`, `OPENFAAS_URL`, the
/// stack file's `provider.gateway`, then the default.
pub fn resolve_gateway(flag: Option<&str>, stack_gateway: Option<&str>) -> String {
    let from_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    flag.map(str::to_owned)
        .or_else(|| from_env("SLUICE_URL"))
        .or_else(|| from_env("OPENFAAS_URL"))
        .or_else(|| stack_gateway.map(str::to_owned))
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned())
        .trim_end_matches('/')
        .to_owned()
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
    /// A client for the gateway at `base`, with the credentials stored or set for it.
    pub fn new(base: String) -> anyhow::Result<Self> {
        let credentials = crate::login::find(&base, true)?;
        Ok(Self::with(base, credentials))
    }

    /// A client for a gateway a stack file named: only credentials stored for it by
    /// `sluice login` (or `faas-cli login`) go there, never those in the environment.
    pub fn for_stack_gateway(base: String) -> anyhow::Result<Self> {
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
            if e.is_connect() {
                anyhow::anyhow!(
                    "cannot reach the gateway at {}: is `sluice up` running? \
                     (point at another with --gateway or SLUICE_URL)",
                    self.base
                )
            } else {
                anyhow::Error::new(e).context(format!("request to {} failed", self.base))
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
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) if status == StatusCode::UNAUTHORIZED && v["code"] == "unauthorized" => {
            anyhow::anyhow!(
                "{} ({status}): log in with `sluice login` (or set SLUICE_TOKEN)",
                v["message"].as_str().unwrap_or_default()
            )
        }
        Ok(v) if v["message"].is_string() => {
            anyhow::anyhow!("{} ({status})", v["message"].as_str().unwrap_or_default())
        }
        _ if body.trim().is_empty() => anyhow::anyhow!("the gateway answered {status}"),
        _ => anyhow::anyhow!("the gateway answered {status}: {}", body.trim()),
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
