//! The portal's static files, compiled into the binary and served under a versioned path.
//!
//! Each file's URL carries a digest of its bytes (`/ui/assets/<digest>/<name>`), so a browser
//! may keep it for a year and still gets a new one the moment a new build changes it. A request
//! for another digest (a page from an older build) gets today's file, not cached.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    pub(crate) name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// The first hex digits of the bytes' SHA-256.
    digest: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, bytes: &'static [u8]) -> Self {
        let digest = Sha256::digest(bytes)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            name,
            content_type,
            bytes,
            digest,
        }
    }

    /// The path pages link to.
    pub(crate) fn href(&self) -> String {
        format!("/ui/assets/{}/{}", self.digest, self.name)
    }
}

/// Every file, looked up by name.
static ASSETS: LazyLock<[Asset; 3]> = LazyLock::new(|| {
    [
        Asset::new(
            "sluice.css",
            "text/css; charset=utf-8",
            include_bytes!("../../ui/sluice.css"),
        ),
        Asset::new(
            "sluice.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../ui/sluice.js"),
        ),
        // htmx 2 (https://htmx.org, Zero-Clause BSD, ui/htmx-LICENSE), as published on npm.
        Asset::new(
            "htmx.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../ui/htmx-2.0.11.min.js"),
        ),
    ]
});

/// The file called `name`.
pub(crate) fn asset(name: &str) -> &'static Asset {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .expect("a file the portal embeds")
}

/// `GET /ui/assets/<digest>/<name>`.
pub(crate) async fn serve(Path((digest, name)): Path<(String, String)>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let cache = if digest == asset.digest {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_has_a_path_of_its_own_content() {
        let css = asset("sluice.css").href();
        assert!(css.starts_with("/ui/assets/") && css.ends_with("/sluice.css"));
        assert_ne!(asset("sluice.js").digest, asset("htmx.min.js").digest);
        assert_eq!(asset("htmx.min.js").digest.len(), 12);
    }
}
