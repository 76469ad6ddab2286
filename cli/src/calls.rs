//! The async-call commands: `sluice call` (show, retry, cancel one call), `sluice calls` (list
//! them) and `sluice dlq` (the dead-letter queue: failed calls, listed and re-driven).

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use sluice_core::{CallId, CallRecord};

use crate::GatewayArg;
use crate::client::{self, Client, resolve_gateway};
use crate::commands::print_json;

/// `sluice call <id>` (the bare form, kept for scripts), or `sluice call show|retry|cancel`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CallArgs {
    #[command(subcommand)]
    pub action: Option<CallAction>,
    #[command(flatten)]
    pub show: ShowArgs,
}

#[derive(Debug, Subcommand)]
pub enum CallAction {
    /// Show what became of a call (what `sluice call <id>` does).
    Show(ShowArgs),
    /// Re-drive a failed call: queue its kept request again.
    Retry(CallIdArgs),
    /// Cancel a call that is still queued (a running one cannot be).
    Cancel(CallIdArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The call id from the 202 (X-Call-Id).
    #[arg(required = true)]
    pub id: Option<String>,
    /// Print the record as JSON.
    #[arg(long, conflicts_with = "result")]
    pub json: bool,
    /// Print the function's kept response body instead of the record.
    #[arg(long)]
    pub result: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

#[derive(Debug, Args)]
pub struct CallIdArgs {
    /// The call id.
    pub id: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

/// A call id from the command line, checked before it goes into a URL's path.
fn call_id(id: &str) -> anyhow::Result<CallId> {
    CallId::parse(id).map_err(|_| {
        anyhow::anyhow!(
            "{id:?} is not a call id (letters, digits, '-', '_', '.' and ':', at most 128)"
        )
    })
}

fn client_for(gateway: &GatewayArg) -> anyhow::Result<Client> {
    Client::new(resolve_gateway(gateway.gateway.as_deref(), None))
}

pub async fn call(args: CallArgs) -> anyhow::Result<()> {
    match args.action {
        None => show(args.show).await,
        Some(CallAction::Show(show_args)) => show(show_args).await,
        Some(CallAction::Retry(args)) => {
            let client = client_for(&args.gateway)?;
            let outcome = redrive(&client, &call_id(&args.id)?, None).await;
            let failed = outcome.error.is_some();
            report_redrives(&[outcome], args.json)?;
            anyhow::ensure!(!failed, "the call was not re-driven");
            Ok(())
        }
        Some(CallAction::Cancel(args)) => {
            let client = client_for(&args.gateway)?;
            let id = call_id(&args.id)?;
            let response = client
                .expect_ok(client.request(Method::DELETE, &format!("/system/calls/{id}")))
                .await?;
            let record: CallRecord = client::json(response).await?;
            if args.json {
                return print_json(&record);
            }
            println!("Cancelled {id} (a call to {}).", record.function);
            Ok(())
        }
    }
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let client = client_for(&args.gateway)?;
    let id = call_id(args.id.as_deref().unwrap_or_default())?;
    if args.result {
        let path = format!("/system/calls/{id}/result");
        let response = client.send(client.request(Method::GET, &path)).await?;
        if response
            .headers()
            .contains_key(sluice_core::PLATFORM_ERROR_HEADER)
        {
            return Err(client::error_of(response).await);
        }
        let status = response.status();
        let bytes = response.bytes().await.context("reading the kept result")?;
        std::io::stdout().write_all(&bytes)?;
        anyhow::ensure!(status.is_success(), "the function had answered {status}");
        return Ok(());
    }
    let response = client
        .expect_ok(client.request(Method::GET, &format!("/system/calls/{id}")))
        .await?;
    let record: CallRecord = client::json(response).await?;
    if args.json {
        return print_json(&record);
    }
    println!("Call:      {}", record.id);
    println!("Function:  {}.{}", record.function, record.namespace);
    println!("Request:   {} {}", record.method, record.path);
    println!("State:     {}", record.state.as_str());
    println!("Attempts:  {}", record.attempts);
    println!("Submitted: {}", record.submitted_at.to_rfc3339());
    if let Some(t) = record.started_at {
        println!("Started:   {}", t.to_rfc3339());
    }
    if let Some(t) = record.finished_at {
        println!("Finished:  {}", t.to_rfc3339());
    }
    if let Some(d) = record.duration_seconds {
        println!("Duration:  {d:.3}s");
    }
    if let Some(code) = record.status_code {
        println!("Status:    {code}");
    }
    if let Some(e) = &record.error {
        println!("Error:     {e}");
    }
    if let Some(url) = &record.callback_url {
        let outcome = match &record.callback {
            None => "pending".to_owned(),
            Some(cb) if cb.delivered => format!("delivered ({} tries)", cb.attempts),
            Some(cb) => format!(
                "failed after {} tries: {}",
                cb.attempts,
                cb.error.as_deref().unwrap_or_default()
            ),
        };
        println!("Callback:  {url} ({outcome})");
    }
    write_timeline(&mut std::io::stdout().lock(), &record)?;
    Ok(())
}

/// The call's timeline, one line per step, oldest first: when it was queued, then each
/// attempt, callback delivery and re-drive the record keeps. Nothing without a timeline.
fn write_timeline(out: &mut impl Write, record: &CallRecord) -> std::io::Result<()> {
    let Some(timeline) = &record.timeline else {
        return Ok(());
    };
    let mut steps = vec![(record.submitted_at, "queued".to_owned())];
    for a in &timeline.attempts {
        let what = match a.redrive {
            0 => format!("attempt {}", a.attempt),
            r => format!("attempt {} (re-drive {r})", a.attempt),
        };
        let line = step(
            &what,
            a.outcome.as_str(),
            a.status_code,
            a.duration_seconds,
            a.error.as_deref(),
        );
        steps.push((a.started_at, line));
    }
    for c in &timeline.callbacks {
        let outcome = if c.delivered { "delivered" } else { "failed" };
        let what = format!("callback {}", c.attempt);
        let line = step(&what, outcome, c.status_code, None, c.error.as_deref());
        steps.push((c.at, line));
    }
    for r in &timeline.redrives {
        steps.push((r.at, format!("re-drive {}", r.redrive)));
    }
    // Stable: steps at the same moment stay in the order above.
    steps.sort_by_key(|(at, _)| *at);
    writeln!(out, "Timeline:")?;
    for (at, line) in steps {
        writeln!(out, "  {}  {}", at.to_rfc3339(), line.trim_end())?;
    }
    Ok(())
}

/// One step of a timeline: what, how it ended, its status and duration, and why it failed.
/// The error is the function's or a receiver's words: control characters are shown as
/// spaces, so it stays on its line and cannot drive the terminal.
fn step(
    what: &str,
    outcome: &str,
    status: Option<u16>,
    duration_seconds: Option<f64>,
    error: Option<&str>,
) -> String {
    let status = status.map(|s| s.to_string()).unwrap_or_default();
    let duration = duration_seconds
        .map(|d| format!("{d:.3}s"))
        .unwrap_or_default();
    let error: String = error
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{what:<24} {outcome:<11} {status:>3} {duration:>9}  {error}")
}

#[derive(Debug, Args)]
pub struct CallsArgs {
    /// Only calls to this function (name or name.namespace).
    #[arg(long)]
    pub function: Option<String>,
    /// Only calls in this state: queued, running, succeeded, failed or cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// How many to show (at most 1000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Continue from a previous page (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print the page as the gateway gives it: `{"calls": [...], "nextCursor": ...}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

/// A page of `GET /system/calls`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallPage {
    calls: Vec<CallRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// One page of calls, filtered as given.
async fn page(
    client: &Client,
    function: Option<&str>,
    status: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> anyhow::Result<CallPage> {
    let mut query = vec![("limit", limit.to_string())];
    for (key, value) in [
        ("function", function),
        ("status", status),
        ("cursor", cursor),
    ] {
        if let Some(v) = value {
            query.push((key, v.to_owned()));
        }
    }
    let request = client.request(Method::GET, "/system/calls").query(&query);
    client::json(client.expect_ok(request).await?).await
}

pub async fn calls(args: CallsArgs) -> anyhow::Result<()> {
    let client = client_for(&args.gateway)?;
    let page = page(
        &client,
        args.function.as_deref(),
        args.status.as_deref(),
        args.limit,
        args.cursor.as_deref(),
    )
    .await?;
    if args.json {
        return print_json(&page);
    }
    let mut out = std::io::stdout().lock();
    write_table(&mut out, &page.calls)?;
    if let Some(cursor) = page.next_cursor {
        writeln!(out, "more: sluice calls --cursor {cursor}")?;
    }
    Ok(())
}

fn write_table(out: &mut impl Write, calls: &[CallRecord]) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<38} {:<20} {:<10} {:>8} {:>6}  Submitted",
        "Call", "Function", "State", "Attempts", "Status"
    )?;
    for c in calls {
        let status = c
            .status_code
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<38} {:<20} {:<10} {:>8} {:>6}  {}",
            c.id.as_str(),
            c.function,
            c.state.as_str(),
            c.attempts,
            status,
            c.submitted_at.to_rfc3339()
        )?;
    }
    Ok(())
}

/// `sluice dlq` lists failed calls; `sluice dlq retry` re-drives one or all of them.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub action: Option<DlqAction>,
    #[command(flatten)]
    pub list: DlqListArgs,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Re-drive a failed call, or with --all every failed call (of --function), up to --limit.
    Retry(DlqRetryArgs),
}

/// Which failed calls: of one function or all, at most `limit`.
#[derive(Debug, Clone, Args)]
pub struct DlqSelection {
    /// Only calls to this function (name or name.namespace).
    #[arg(long)]
    pub function: Option<String>,
    /// At most this many calls.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Calls fetched per request (the gateway's pages are at most 1000).
    #[arg(long, default_value_t = 100, hide = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub selection: DlqSelection,
    /// Print `{"calls": [...], "truncated": bool}` (truncated: more than --limit failed).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "all"]))]
pub struct DlqRetryArgs {
    /// The failed call to re-drive.
    pub id: Option<String>,
    /// Re-drive every failed call (of --function), up to --limit.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub selection: DlqSelection,
    /// Print the outcomes as JSON: `{"retried": n, "failed": n, "calls": [...]}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArg,
}

/// The failed calls `selection` names, newest first, paging through the gateway's list; and
/// whether there were more than its limit.
async fn failed_calls(
    client: &Client,
    selection: &DlqSelection,
) -> anyhow::Result<(Vec<CallRecord>, bool)> {
    let limit = selection.limit as usize;
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        // One more than wanted, to tell whether there are more.
        let want = (limit + 1 - found.len()).min(selection.page_size as usize);
        let page = page(
            client,
            selection.function.as_deref(),
            Some("failed"),
            u32::try_from(want).unwrap_or(u32::MAX),
            cursor.as_deref(),
        )
        .await?;
        found.extend(page.calls);
        match page.next_cursor {
            Some(next) if found.len() <= limit => cursor = Some(next),
            _ => break,
        }
    }
    let truncated = found.len() > limit;
    found.truncate(limit);
    Ok((found, truncated))
}

#[derive(Debug, Serialize)]
struct DlqList<'a> {
    calls: &'a [CallRecord],
    truncated: bool,
}

pub async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    match args.action {
        Some(DlqAction::Retry(args)) => dlq_retry(args).await,
        None => {
            let args = args.list;
            let client = client_for(&args.gateway)?;
            let (calls, truncated) = failed_calls(&client, &args.selection).await?;
            if args.json {
                return print_json(&DlqList {
                    calls: &calls,
                    truncated,
                });
            }
            let mut out = std::io::stdout().lock();
            write_table(&mut out, &calls)?;
            if truncated {
                writeln!(
                    out,
                    "more failed calls than --limit {}; raise it to see them",
                    args.selection.limit
                )?;
            }
            Ok(())
        }
    }
}

/// What became of one re-drive.
#[derive(Debug, Serialize)]
struct Redrive {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    function: Option<String>,
    /// Why the gateway would not re-drive it, when it would not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Asks the gateway to re-drive `id`.
async fn redrive(client: &Client, id: &CallId, function: Option<String>) -> Redrive {
    let request = client.request(Method::POST, &format!("/system/calls/{id}/retry"));
    let error = client
        .expect_ok(request)
        .await
        .err()
        .map(|e| crate::error_line(&e));
    Redrive {
        id: id.to_string(),
        function,
        error,
    }
}

#[derive(Debug, Serialize)]
struct RedriveReport<'a> {
    retried: usize,
    failed: usize,
    calls: &'a [Redrive],
}

/// Prints each outcome and a summary (or all of it as JSON).
fn report_redrives(outcomes: &[Redrive], json: bool) -> anyhow::Result<()> {
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let retried = outcomes.len() - failed;
    if json {
        return print_json(&RedriveReport {
            retried,
            failed,
            calls: outcomes,
        });
    }
    let mut out = std::io::stdout().lock();
    for o in outcomes {
        let of = o
            .function
            .as_deref()
            .map(|f| format!(" (a call to {f})"))
            .unwrap_or_default();
        match &o.error {
            None => writeln!(out, "re-driven {}{of}", o.id)?,
            Some(e) => writeln!(out, "not re-driven {}{of}: {e}", o.id)?,
        }
    }
    writeln!(out, "{retried} re-driven, {failed} not")?;
    Ok(())
}

async fn dlq_retry(args: DlqRetryArgs) -> anyhow::Result<()> {
    let client = client_for(&args.gateway)?;
    let mut outcomes = Vec::new();
    match (&args.id, args.all) {
        (Some(id), false) => outcomes.push(redrive(&client, &call_id(id)?, None).await),
        (None, true) => {
            // Listed first, then re-driven: a call that fails again meanwhile is not taken twice.
            let (calls, truncated) = failed_calls(&client, &args.selection).await?;
            for call in calls {
                let function = format!("{}.{}", call.function, call.namespace);
                outcomes.push(redrive(&client, &call.id, Some(function)).await);
            }
            if truncated && !args.json {
                eprintln!(
                    "more failed calls than --limit {}; run again for the rest",
                    args.selection.limit
                );
            }
        }
        _ => anyhow::bail!("give a call id or --all, not both"),
    }
    report_redrives(&outcomes, args.json)?;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} call(s) could not be re-driven",
        outcomes.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn the_bare_call_form_still_shows_a_call() {
        let Ok(Command::Call(args)) = parse(&["call", "abc", "--json"]) else {
            panic!("sluice call <id> parses");
        };
        assert!(args.action.is_none());
        assert_eq!(args.show.id.as_deref(), Some("abc"));
        assert!(args.show.json);
        let Ok(Command::Call(args)) = parse(&["call", "show", "abc", "-g", "h:1"]) else {
            panic!("sluice call show <id> parses");
        };
        let Some(CallAction::Show(show)) = args.action else {
            panic!("show");
        };
        assert_eq!(show.id.as_deref(), Some("abc"));
        assert_eq!(show.gateway.gateway.as_deref(), Some("h:1"));
        assert!(matches!(
            parse(&["call", "retry", "abc"]),
            Ok(Command::Call(CallArgs {
                action: Some(CallAction::Retry(_)),
                ..
            }))
        ));
        assert!(matches!(
            parse(&["call", "cancel", "abc"]),
            Ok(Command::Call(CallArgs {
                action: Some(CallAction::Cancel(_)),
                ..
            }))
        ));
        // A call id is needed, in either form.
        assert!(parse(&["call"]).is_err());
        assert!(parse(&["call", "show"]).is_err());
    }

    #[test]
    fn dlq_retry_takes_an_id_or_all_but_not_both() {
        assert!(matches!(
            parse(&["dlq", "--limit", "5", "--json"]),
            Ok(Command::Dlq(DlqArgs { action: None, .. }))
        ));
        let Ok(Command::Dlq(DlqArgs {
            action: Some(DlqAction::Retry(retry)),
            ..
        })) = parse(&[
            "dlq",
            "retry",
            "--all",
            "--function",
            "fail",
            "--limit",
            "3",
        ])
        else {
            panic!("dlq retry --all parses");
        };
        assert!(retry.all && retry.id.is_none());
        assert_eq!(retry.selection.function.as_deref(), Some("fail"));
        assert_eq!(retry.selection.limit, 3);
        assert!(parse(&["dlq", "retry"]).is_err());
        assert!(parse(&["dlq", "retry", "abc", "--all"]).is_err());
        assert!(parse(&["dlq", "--limit", "0"]).is_err());
    }

    #[test]
    fn a_timeline_is_shown_oldest_first_one_line_a_step() {
        use sluice_core::{
            AttemptOutcome, CallAttempt, CallRedrive, CallTimeline, CallbackDelivery, Timestamp,
        };
        let at = |s: i64| Timestamp::from_millis(1_795_000_000_000 + s * 1000);
        let attempt =
            |n, redrive, started, outcome, status: Option<u16>, error: Option<&str>| CallAttempt {
                attempt: n,
                redrive,
                started_at: at(started),
                finished_at: status.map(|_| at(started + 1)),
                duration_seconds: status.map(|_| 0.25),
                status_code: status,
                error: error.map(str::to_owned),
                outcome,
            };
        let mut record: CallRecord = serde_json::from_value(serde_json::json!({
            "id": "c1", "function": "flaky", "namespace": "openfaas-fn", "method": "POST",
            "path": "/", "state": "succeeded", "attempts": 1, "submittedAt": at(0),
        }))
        .unwrap();
        let mut out = Vec::new();
        write_timeline(&mut out, &record).unwrap();
        assert!(out.is_empty(), "no timeline, no lines");
        record.timeline = Some(CallTimeline {
            attempts: vec![
                attempt(
                    1,
                    0,
                    1,
                    AttemptOutcome::Failed,
                    Some(503),
                    Some("failed:\n\x1b[2Jno"),
                ),
                attempt(2, 0, 3, AttemptOutcome::Interrupted, None, None),
                attempt(3, 0, 5, AttemptOutcome::Failed, Some(500), Some("gave up")),
                attempt(1, 1, 9, AttemptOutcome::Succeeded, Some(200), None),
            ],
            callbacks: vec![
                CallbackDelivery {
                    attempt: 1,
                    at: at(6),
                    delivered: false,
                    status_code: Some(503),
                    error: Some("receiver answered 503".into()),
                },
                CallbackDelivery {
                    attempt: 1,
                    at: at(10),
                    delivered: true,
                    status_code: Some(200),
                    error: None,
                },
            ],
            redrives: vec![CallRedrive {
                redrive: 1,
                at: at(8),
            }],
        });
        let mut out = Vec::new();
        write_timeline(&mut out, &record).unwrap();
        let want = "\
Timeline:
  2026-11-18T11:06:40.000Z  queued
  2026-11-18T11:06:41.000Z  attempt 1                failed      503    0.250s  failed:  [2Jno
  2026-11-18T11:06:43.000Z  attempt 2                interrupted
  2026-11-18T11:06:45.000Z  attempt 3                failed      500    0.250s  gave up
  2026-11-18T11:06:46.000Z  callback 1               failed      503            receiver answered 503
  2026-11-18T11:06:48.000Z  re-drive 1
  2026-11-18T11:06:49.000Z  attempt 1 (re-drive 1)   succeeded   200    0.250s
  2026-11-18T11:06:50.000Z  callback 1               delivered   200
";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn a_call_id_that_could_climb_out_of_its_path_is_refused() {
        assert!(call_id("../functions").is_err());
        assert!(call_id("a/b").is_err());
        assert_eq!(call_id("ok-1").unwrap().as_str(), "ok-1");
    }
}
