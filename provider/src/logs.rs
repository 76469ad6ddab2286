//! Function output: a bounded ring of recent lines per function with live followers (local
//! replicas), or this process's own stdout and stderr (the container watchdog).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use sluice_core::{FunctionRef, LogLine, LogStream, Timestamp};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// Longest line kept; longer lines are cut and marked.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;
/// How many lines a follower may fall behind before it skips ahead.
const FOLLOW_BUFFER: usize = 1024;

/// Recent output of one function's replicas.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    function: FunctionRef,
    capacity: usize,
    state: Mutex<Lines>,
}

#[derive(Debug, Default)]
struct Lines {
    recent: VecDeque<LogLine>,
    /// Made when someone follows, dropped when nobody does any more: its buffer takes
    /// [`FOLLOW_BUFFER`] slots up front, far more than an idle function should cost.
    live: Option<broadcast::Sender<LogLine>>,
}

impl LogBuffer {
    pub(crate) fn new(function: FunctionRef, capacity: usize) -> Self {
        Self {
            function,
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    pub(crate) fn push(&self, instance: &str, text: String) {
        let line = LogLine {
            name: self.function.name.clone(),
            namespace: self.function.namespace.clone(),
            instance: instance.to_owned(),
            timestamp: Timestamp::now(),
            text,
        };
        // Ring and live channel change under one lock, so a new follower sees every line exactly
        // once: either in its copy of the ring or on the channel.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.recent.len() == self.capacity {
            state.recent.pop_front();
        }
        state.recent.push_back(line.clone());
        if let Some(live) = &state.live {
            if live.receiver_count() == 0 {
                state.live = None;
            } else {
                let _ = live.send(line);
            }
        }
    }

    /// The last `tail` lines, then live ones if `follow`. The live part ends when the buffer is
    /// dropped (the function was removed).
    pub(crate) fn stream(&self, tail: usize, follow: bool) -> LogStream {
        use futures_util::StreamExt;
        let (recent, rx) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let skip = state.recent.len().saturating_sub(tail);
            let recent: Vec<LogLine> = state.recent.iter().skip(skip).cloned().collect();
            let rx = follow.then(|| {
                state
                    .live
                    .get_or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0)
                    .subscribe()
            });
            (recent, rx)
        };
        let head = futures_util::stream::iter(recent);
        match rx {
            None => Box::pin(head),
            Some(rx) => {
                // A follower that falls too far behind skips the lines it missed.
                let live = tokio_stream::wrappers::BroadcastStream::new(rx)
                    .filter_map(|r| futures_util::future::ready(r.ok()));
                Box::pin(head.chain(live))
            }
        }
    }
}

/// Where the lines a function writes (and what its watchdog says about it) go.
#[derive(Debug, Clone)]
pub(crate) enum LogSink {
    /// A local replica's: the function's ring, each line tagged with the replica.
    Ring {
        buffer: Arc<LogBuffer>,
        instance: Arc<str>,
    },
    /// A container's: this process's own stdout or stderr, one line as written, with nothing
    /// added (the container runtime keeps and timestamps them). The write is a blocking one,
    /// as the `tracing` subscriber's own writes to stderr are; lines are bounded.
    Stdout,
    Stderr,
}

impl LogSink {
    pub(crate) fn push(&self, line: String) {
        match self {
            Self::Ring { buffer, instance } => buffer.push(instance, line),
            Self::Stdout => write_line(std::io::stdout().lock(), line),
            Self::Stderr => write_line(std::io::stderr().lock(), line),
        }
    }
}

/// One line in one write, so lines from concurrent runs never interleave.
fn write_line(mut out: impl Write, mut line: String) {
    line.push('\n');
    // Nowhere to report a closed stdout or stderr to.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Reads `reader` to its end, handing each line (without its newline, cut at
/// [`MAX_LINE_BYTES`]) to `emit`. Memory stays bounded whatever the child writes.
pub(crate) async fn pump_lines<R, F>(mut reader: R, mut emit: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(String),
{
    let mut pending: Vec<u8> = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                emit(finish_line(&mut pending, &mut truncated));
            } else if pending.len() < MAX_LINE_BYTES {
                pending.push(b);
            } else {
                truncated = true;
            }
        }
    }
    if !pending.is_empty() || truncated {
        emit(finish_line(&mut pending, &mut truncated));
    }
}

fn finish_line(pending: &mut Vec<u8>, truncated: &mut bool) -> String {
    let mut text = String::from_utf8_lossy(pending)
        .trim_end_matches('\r')
        .to_owned();
    if *truncated {
        text.push_str(" [line truncated]");
    }
    pending.clear();
    *truncated = false;
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend(b"\nlast");
        let mut got = Vec::new();
        pump_lines(&input[..], |l| got.push(l)).await;
        assert_eq!(got[..2], ["one", "two"]);
        assert_eq!(got[2].len(), MAX_LINE_BYTES + " [line truncated]".len());
        assert_eq!(got[3], "last");
    }

    #[tokio::test]
    async fn ring_keeps_the_last_lines_and_follows() {
        let buf = LogBuffer::new(FunctionRef::parse("f", None).unwrap(), 3);
        for i in 0..5 {
            buf.push("r1", format!("line {i}"));
        }
        let texts: Vec<String> = buf.stream(10, false).map(|l| l.text).collect().await;
        assert_eq!(texts, ["line 2", "line 3", "line 4"]);
        let tail: Vec<String> = buf.stream(1, false).map(|l| l.text).collect().await;
        assert_eq!(tail, ["line 4"]);
        let mut follow = buf.stream(1, true);
        buf.push("r1", "line 5".into());
        assert_eq!(follow.next().await.unwrap().text, "line 4");
        assert_eq!(follow.next().await.unwrap().text, "line 5");
    }
}
