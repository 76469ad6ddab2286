//! {{name}}: a classic function. Each request runs this program: the body is on stdin, the
//! response is what it prints; the request's headers are in `Http_*` variables (`Http_Method`,
//! `Http_Path`, ...). A non-zero exit answers 500.

use std::io::{Read, Write};

/// Answers one request's body.
fn handle(body: &str) -> String {
    let name = body.trim();
    let name = if name.is_empty() { "world" } else { name };
    format!("Hello, {name}!\n")
}

fn main() -> std::io::Result<()> {
    let mut body = String::new();
    std::io::stdin().take(1 << 20).read_to_string(&mut body)?;
    std::io::stdout().write_all(handle(&body).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::handle;

    #[test]
    fn greets_the_name_in_the_body() {
        assert_eq!(handle("hi\n"), "Hello, hi!\n");
    }

    #[test]
    fn greets_the_world_without_a_body() {
        assert_eq!(handle(""), "Hello, world!\n");
    }
}
