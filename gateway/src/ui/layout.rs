//! The frame every portal page shares (head, navigation, logout), and small pieces pages reuse.

use maud::{DOCTYPE, Markup, html};

use super::Viewer;
use super::assets::asset;

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Functions,
    Deploy,
    Calls,
    DeadLetters,
    None,
}

const ENTRIES: [(Nav, &str, &str); 5] = [
    (Nav::Overview, "/ui/", "Overview"),
    (Nav::Functions, "/ui/functions", "Functions"),
    (Nav::Deploy, "/ui/deploy", "Deploy"),
    (Nav::Calls, "/ui/calls", "Calls"),
    (Nav::DeadLetters, "/ui/dead-letters", "Dead letters"),
];

/// htmx's settings: no inline styles (the CSP allows none), no `eval`, requests to this origin
/// only.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true,"historyCacheSize":0}"#;

/// The document's head: styles and scripts from their versioned paths.
fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Sluice" }
            @if let Some(csrf) = csrf {
                meta name="csrf-token" content=(csrf);
            }
            meta name="htmx-config" content=(HTMX_CONFIG);
            link rel="stylesheet" href=(asset("sluice.css").href());
            script src=(asset("htmx.min.js").href()) defer {}
            script src=(asset("sluice.js").href()) defer {}
        }
    }
}

/// A whole page for a logged-in viewer.
pub(crate) fn page(viewer: &Viewer, nav: Nav, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&viewer.csrf)))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    div.bar {
                        a.brand href="/ui/" { "Sluice" }
                        nav aria-label="Main" {
                            @for (entry, href, label) in ENTRIES {
                                @if entry == nav {
                                    a href=(href) aria-current="page" { (label) }
                                } @else {
                                    a href=(href) { (label) }
                                }
                            }
                        }
                        span.who { "Signed in as " (viewer.user) }
                        form method="post" action="/ui/logout" {
                            (csrf_field(viewer))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page for someone not logged in (the login page).
pub(crate) fn bare_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body {
                main #main {
                    (body)
                }
            }
        }
    }
}

/// The hidden field a form carries its CSRF token in.
pub(crate) fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(super::CSRF_FIELD) value=(viewer.csrf); }
}

/// A notice above a page's content (an outcome, or an error).
pub(crate) fn notice(text: &str, bad: bool) -> Markup {
    html! {
        @if bad {
            div.notice.bad role="alert" { (text) }
        } @else {
            div.notice role="status" { (text) }
        }
    }
}

/// A time as the portal shows it: UTC, to the second.
pub(crate) fn time(at: sluice_core::Timestamp) -> Markup {
    let shown = humantime::format_rfc3339_seconds(at.to_system_time()).to_string();
    html! { time datetime=(shown) { (shown.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}

/// How long ago `at` was, in the largest whole unit.
pub(crate) fn ago(at: sluice_core::Timestamp, now: sluice_core::Timestamp) -> String {
    let secs = now.as_millis().saturating_sub(at.as_millis()).max(0) / 1000;
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// Bytes shown as text when they are UTF-8 (and mostly printable), else as a hex dump; at most
/// `limit` bytes, and whether it was cut.
pub(crate) fn shown_bytes(bytes: &[u8], limit: usize) -> (String, bool, &'static str) {
    let cut = bytes.len() > limit;
    let bytes = &bytes[..bytes.len().min(limit)];
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => Some(s),
        // Cut in the middle of a character: the text up to it.
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    let printable = |s: &str| {
        s.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    };
    match text {
        Some(s) if printable(s) => (s.to_owned(), cut, "text"),
        _ => (hex_dump(bytes), cut, "hex"),
    }
}

/// `xxd`-style lines: offset, sixteen bytes in hex, and those printable as ASCII.
fn hex_dump(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 4 + 16);
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", i * 16);
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

/// A number of bytes in the largest unit that keeps it short.
pub(crate) fn size(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_as_text_or_hex_and_cut() {
        assert_eq!(
            shown_bytes(b"hello\n", 100),
            ("hello\n".into(), false, "text")
        );
        let (hex, cut, kind) = shown_bytes(&[0, 1, 2, 0xff], 100);
        assert_eq!((cut, kind), (false, "hex"));
        assert!(hex.starts_with("00000000  00 01 02 ff"), "{hex}");
        // A cut through a character keeps the text before it.
        let (text, cut, kind) = shown_bytes("aé".as_bytes(), 2);
        assert_eq!((text.as_str(), cut, kind), ("a", true, "text"));
    }

    #[test]
    fn times_ago_use_the_largest_unit() {
        let now = sluice_core::Timestamp::from_millis(10_000_000);
        assert_eq!(
            ago(sluice_core::Timestamp::from_millis(9_995_000), now),
            "5 s ago"
        );
        assert_eq!(
            ago(sluice_core::Timestamp::from_millis(9_000_000), now),
            "16 min ago"
        );
    }
}
