//! `sluice deploy`'s wait: each deployed function polled until it is ready, failing, or out of
//! time, with a line of progress per function.

use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use sluice_core::FunctionStatus;

use crate::client::{self, Client};

/// How often each function's status is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Where one function stands, as its status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Replicas are starting (or none is ready yet).
    Starting,
    /// At least one replica is ready.
    Ready,
    /// It is registered with no replica wanted (scaled to zero already, which a function
    /// labelled `com.openfaas.scale.zero` may be): it starts on its first call.
    AtZero,
    /// It will not become ready by itself: why.
    Failed(String),
}

impl Readiness {
    /// Whether waiting is over for this function.
    pub fn settled(&self) -> bool {
        !matches!(self, Self::Starting)
    }

    /// The progress line's text.
    pub fn describe(&self) -> String {
        match self {
            Self::Starting => "starting".into(),
            Self::Ready => "ready".into(),
            Self::AtZero => "deployed at zero replicas (starts on its first call)".into(),
            Self::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// Where `status`'s function stands. A function with a replica ready is ready even if another
/// crash-loops; one whose replicas keep exiting has failed (on Kubernetes: a pod reported in
/// `CrashLoopBackOff`), whatever its deadline.
pub fn readiness(status: &FunctionStatus) -> Readiness {
    if status.available_replicas >= 1 {
        return Readiness::Ready;
    }
    if let Some(c) = &status.crash_loop {
        let last = match c.last_line() {
            Some(line) => format!("last log line: {line}"),
            None => "it wrote nothing".into(),
        };
        return Readiness::Failed(format!(
            "crash-looping: {} ({} times in a row); {last}",
            c.exit, c.exits
        ));
    }
    if let Some(problem) = status
        .problem
        .as_deref()
        .filter(|p| p.contains("CrashLoopBackOff"))
    {
        return Readiness::Failed(problem.to_owned());
    }
    if status.replicas == 0 {
        return Readiness::AtZero;
    }
    Readiness::Starting
}

/// Progress lines, one per function: redrawn in place on a terminal, printed as they change
/// otherwise.
struct Progress {
    names: Vec<String>,
    shown: Vec<Option<String>>,
    width: usize,
    terminal: bool,
    drawn: bool,
}

impl Progress {
    fn new(names: Vec<String>, terminal: bool) -> Self {
        let width = names.iter().map(String::len).max().unwrap_or(0);
        Self {
            shown: vec![None; names.len()],
            names,
            width,
            terminal,
            drawn: false,
        }
    }

    fn show(&mut self, i: usize, text: String) -> std::io::Result<()> {
        if self.shown[i].as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        self.shown[i] = Some(text);
        let mut out = std::io::stdout().lock();
        if self.terminal {
            if self.drawn {
                write!(out, "\x1b[{}A", self.names.len())?;
            }
            for (name, shown) in self.names.iter().zip(&self.shown) {
                let text = shown.as_deref().unwrap_or("starting");
                writeln!(out, "\x1b[2K{name:<w$}  {text}", w = self.width)?;
            }
            self.drawn = true;
        } else {
            let name = &self.names[i];
            let text = self.shown[i].as_deref().unwrap_or_default();
            writeln!(out, "{name}: {text}")?;
        }
        out.flush()
    }
}

/// Waits until every function in `names` is ready (or registered at zero), has failed, or
/// `timeout` has passed. Returns the functions that are not ready, each with why.
pub async fn wait_ready(
    client: &Client,
    names: Vec<(String, Option<String>)>,
    timeout: Duration,
    terminal: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let labels = names.iter().map(|(n, _)| n.clone()).collect();
    let mut progress = Progress::new(labels, terminal);
    let mut states = vec![Readiness::Starting; names.len()];
    let mut last_error: Vec<Option<String>> = vec![None; names.len()];
    for i in 0..names.len() {
        progress.show(i, Readiness::Starting.describe())?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        for (i, (name, namespace)) in names.iter().enumerate() {
            if states[i].settled() {
                continue;
            }
            let mut request = client.request(Method::GET, &format!("/system/function/{name}"));
            if let Some(ns) = namespace {
                request = request.query(&[("namespace", ns)]);
            }
            // One poll may not outlast the deadline: a gateway that never answers is a failure.
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_secs(1));
            let sent = match tokio::time::timeout(left, client.send(request)).await {
                Ok(sent) => sent,
                Err(_) => Err(anyhow::anyhow!(
                    "the gateway did not answer within {left:?}"
                )),
            };
            match sent {
                Ok(response) if response.status().is_success() => {
                    match client::json::<FunctionStatus>(response).await {
                        Ok(status) => states[i] = readiness(&status),
                        Err(e) => last_error[i] = Some(format!("{e:#}")),
                    }
                }
                Ok(response) if client::is_not_found(response.status()) => {
                    states[i] = Readiness::Failed("it was removed while starting".into());
                }
                Ok(response) => {
                    last_error[i] = Some(format!("{:#}", client::error_of(response).await))
                }
                Err(e) => last_error[i] = Some(format!("{e:#}")),
            }
            progress.show(i, states[i].describe())?;
        }
        if states.iter().all(Readiness::settled) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            for (i, state) in states.iter_mut().enumerate() {
                if !state.settled() {
                    let mut why =
                        format!("not ready after {}", humantime::format_duration(timeout));
                    if let Some(e) = &last_error[i] {
                        why.push_str(&format!(" (last error: {e})"));
                    }
                    *state = Readiness::Failed(why);
                    progress.show(i, state.describe())?;
                }
            }
            break;
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL_EVERY)).await;
    }
    Ok(names
        .into_iter()
        .zip(states)
        .filter_map(|((name, _), state)| match state {
            Readiness::Failed(why) => Some((name, why)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::CrashLoop;

    fn status(replicas: u64, available: u64) -> FunctionStatus {
        FunctionStatus {
            name: "f".into(),
            replicas,
            available_replicas: available,
            ..Default::default()
        }
    }

    #[test]
    fn what_each_status_means_for_the_wait() {
        assert_eq!(readiness(&status(1, 0)), Readiness::Starting);
        assert_eq!(readiness(&status(2, 1)), Readiness::Ready);
        assert_eq!(readiness(&status(0, 0)), Readiness::AtZero);
        let crashing = FunctionStatus {
            crash_loop: Some(CrashLoop::new(
                "exited with status 3".into(),
                3,
                ["starting".to_owned(), "boom".to_owned()],
            )),
            ..status(1, 0)
        };
        assert_eq!(
            readiness(&crashing),
            Readiness::Failed(
                "crash-looping: exited with status 3 (3 times in a row); last log line: boom"
                    .into()
            )
        );
        // One replica ready serves, whatever another does.
        assert_eq!(
            readiness(&FunctionStatus {
                available_replicas: 1,
                ..crashing
            }),
            Readiness::Ready
        );
        let silent = FunctionStatus {
            crash_loop: Some(CrashLoop::new("killed by signal 9".into(), 4, [])),
            ..status(1, 0)
        };
        assert!(readiness(&silent).describe().ends_with("it wrote nothing"));
        let kube = FunctionStatus {
            problem: Some("pod f-1: CrashLoopBackOff: back-off 10s (last exit code 1)".into()),
            ..status(1, 0)
        };
        assert!(matches!(readiness(&kube), Readiness::Failed(w) if w.contains("exit code 1")));
        let pulling = FunctionStatus {
            problem: Some("pod f-1: ImagePullBackOff".into()),
            ..status(1, 0)
        };
        assert_eq!(readiness(&pulling), Readiness::Starting);
    }
}
