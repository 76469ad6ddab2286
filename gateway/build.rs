//! Build-time facts for `GET /system/info`: the git commit the gateway was built from, its
//! subject line, and the build date, as `SLUICE_GIT_SHA`, `SLUICE_GIT_MESSAGE` and
//! `SLUICE_BUILD_DATE`.
//!
//! Outside a git checkout (a source tarball, a Docker build without `.git`) the commit is
//! "unknown". The date is `SOURCE_DATE_EPOCH` when set (reproducible builds), else the commit's
//! date, else "unknown"; never the wall clock, so an unchanged tree builds the same. Cargo is
//! told to run this again only when `HEAD` or the branch it names moves, not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // Named, so that cargo does not fall back to running this again for any change in the crate.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&dir)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (!text.is_empty()).then_some(text)
    };
    watch_head(&dir, &git);
    let sha = git(&["rev-parse", "HEAD"]);
    let message = sha
        .as_ref()
        .and_then(|_| git(&["log", "-1", "--format=%s"]))
        .unwrap_or_default();
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| {
            sha.as_ref()
                .and_then(|_| git(&["log", "-1", "--format=%ct"]))
        })
        .and_then(|s| s.trim().parse::<u64>().ok());
    let date = epoch.map_or_else(
        || "unknown".to_owned(),
        |secs| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        },
    );
    println!(
        "cargo:rustc-env=SLUICE_GIT_SHA={}",
        sha.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rustc-env=SLUICE_GIT_MESSAGE={}", one_line(&message));
    println!("cargo:rustc-env=SLUICE_BUILD_DATE={date}");
}

/// Reruns this script when the checkout's `HEAD` changes (a checkout, a detached commit) or the
/// branch it names moves (a commit): its ref file, or `packed-refs` where refs are packed. Only
/// files that exist are named (cargo would rerun every time for a missing one); outside a
/// checkout nothing is, and the script runs again only when it changes itself.
fn watch_head(dir: &Path, git: &dyn Fn(&[&str]) -> Option<String>) {
    let absolute = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { dir.join(p) }
    };
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(absolute) else {
        return;
    };
    let common = git(&["rev-parse", "--git-common-dir"])
        .map(absolute)
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common.join(branch));
    }
    for path in watched.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// A commit subject as one line of a `rustc-env` value.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
