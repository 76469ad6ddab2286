//! The Kubernetes provider against a scripted API server (`tower_test::mock` behind a real
//! `kube::Client`): every call is checked for method, path and body, and answered as the API
//! server would, refusals included.

mod lease;
mod lifecycle;
mod secrets;
mod watch;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use sluice_core::{FunctionDeployment, FunctionRef, FunctionSpec, Timestamp};
use sluice_kube::{KubeConfig, KubeProvider};

pub(crate) type Reply = Response<BoxBody<Bytes, Infallible>>;
type Handle = tower_test::mock::Handle<Request<Body>, Reply>;

/// The namespace functions go to in these tests.
pub(crate) const NS: &str = "openfaas-fn";

/// The scripted API server.
pub(crate) struct ApiServer(Handle);

/// One call the provider made, to be checked and answered.
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) body: Option<Value>,
    respond: tower_test::mock::SendResponse<Reply>,
}

pub(crate) fn provider() -> (KubeProvider, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Reply>();
    let client = Client::new(service, NS);
    let provider = KubeProvider::new(
        client,
        KubeConfig {
            namespace: NS.into(),
            ..KubeConfig::default()
        },
    );
    (provider, ApiServer(handle))
}

impl ApiServer {
    /// The next call, within a deadline.
    pub(crate) async fn next(&mut self) -> Call {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
                .await
                .expect("the provider made the call the scenario expects")
                .expect("the client is still there");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("a readable request body");
        let body = (!bytes.is_empty())
            .then(|| serde_json::from_slice(&bytes).expect("the request body is JSON"));
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body,
            respond,
        }
    }

    /// The next call, or `None` once the client is gone.
    pub(crate) async fn next_or_end(&mut self) -> Option<Call> {
        let (request, respond) = self.0.next_request().await?;
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.ok()?;
        let body = (!bytes.is_empty())
            .then(|| serde_json::from_slice(&bytes).ok())
            .flatten();
        Some(Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body,
            respond,
        })
    }

    /// The next call, checked to be `method path`.
    pub(crate) async fn expect(&mut self, method: &str, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "unexpected call (query {:?}, body {:?})",
            call.query,
            call.body
        );
        call
    }

    /// No call is made within a short while.
    pub(crate) async fn expect_silence(&mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await
        {
            panic!(
                "no call was expected, got {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

impl Call {
    pub(crate) fn body(&self) -> &Value {
        self.body.as_ref().expect("the call has a body")
    }

    pub(crate) fn reply(self, code: u16, body: &Value) {
        self.reply_raw(code, "application/json", serde_json::to_vec(body).unwrap());
    }

    pub(crate) fn reply_raw(self, code: u16, content_type: &str, body: Vec<u8>) {
        let response = Response::builder()
            .status(code)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)).boxed())
            .unwrap();
        self.respond.send_response(response);
    }

    /// Answers with a streaming body, fed from `rx` (a watch).
    pub(crate) fn reply_stream(self, rx: tokio::sync::mpsc::Receiver<Bytes>) {
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(http_body::Frame::data(b)), rx))
        });
        let body = http_body_util::StreamBody::new(frames).boxed();
        let response = Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        self.respond.send_response(response);
    }

    /// Answers with the API server's `Status` for a refusal.
    pub(crate) fn refuse(self, code: u16, reason: &str, message: &str) {
        self.reply(code, &status(code, reason, message));
    }
}

pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
}

/// What the API server answers a create or replace with: the object, versioned.
pub(crate) fn stored(mut object: Value, version: u32) -> Value {
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    object["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000001");
    object
}

pub(crate) fn echo() -> FunctionSpec {
    FunctionSpec::new(
        FunctionRef::parse("echo", Some(NS)).unwrap(),
        FunctionDeployment {
            service: "echo".into(),
            image: "ghcr.io/example/echo:1".into(),
            namespace: Some(NS.into()),
            env_process: Some("python3 -u echo.py".into()),
            env_vars: BTreeMap::from([("mode".into(), "http".into())]),
            labels: Some(BTreeMap::from([(
                "com.openfaas.scale.min".into(),
                "1".into(),
            )])),
            ..Default::default()
        },
        1,
        Timestamp::now(),
    )
    .unwrap()
}

pub(crate) fn not_found(kind: &str, name: &str) -> Value {
    status(404, "NotFound", &format!("{kind} \"{name}\" not found"))
}
