//! Function names and namespaces: parsing `name[.namespace]` and DNS-1123 validation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The namespace a function lives in when none is given, as in OpenFaaS.
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

static FUNCTION_NAMESPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The namespace a function goes to when it names none: [`DEFAULT_NAMESPACE`] unless the
/// process set another at start-up ([`set_default_namespace`]).
pub fn default_namespace() -> &'static str {
    FUNCTION_NAMESPACE
        .get()
        .map_or(DEFAULT_NAMESPACE, String::as_str)
}

/// Sets this process's default function namespace (`--function-namespace`), once, before any
/// name is parsed; `false` (and no change) if one was set already or it is not a valid name.
pub fn set_default_namespace(namespace: &str) -> bool {
    validate_label("namespace", namespace).is_ok()
        && FUNCTION_NAMESPACE.set(namespace.to_owned()).is_ok()
}

/// Longest DNS-1123 label.
const MAX_LABEL_LEN: usize = 63;

/// A function's identity: its name and namespace, both DNS-1123 labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FunctionRef {
    pub name: String,
    pub namespace: String,
}

/// Why a name or namespace was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {MAX_LABEL_LEN} characters")]
    TooLong { what: &'static str, value: String },
    #[error(
        "{what} {value:?} is not a valid DNS-1123 label: use lower-case letters, digits and '-', \
         starting and ending with a letter or digit"
    )]
    Invalid { what: &'static str, value: String },
}

impl FunctionRef {
    /// Builds a reference from a separate name and optional namespace, validating both.
    pub fn new(name: &str, namespace: Option<&str>) -> Result<Self, NameError> {
        let namespace = match namespace {
            Some(ns) if !ns.is_empty() => ns,
            _ => default_namespace(),
        };
        validate_label("function name", name)?;
        validate_label("namespace", namespace)?;
        Ok(Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// Parses `name` or `name.namespace` (faas-cli sends `echo.openfaas-fn`), split at the last
    /// dot as OpenFaaS's gateway does (`GetNamespace`): in `a.b.c` the namespace is `c` and
    /// the name `a.b`, which is then refused as a name. A `namespace` query parameter, when
    /// given, applies only if the name carries none. A dot with nothing after it (`echo.`) is an
    /// error, not the default namespace.
    pub fn parse(qualified: &str, namespace: Option<&str>) -> Result<Self, NameError> {
        match qualified.rsplit_once('.') {
            Some((name, ns)) => {
                validate_label("namespace", ns)?;
                Self::new(name, Some(ns))
            }
            None => Self::new(qualified, namespace),
        }
    }
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace == default_namespace() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}.{}", self.name, self.namespace)
        }
    }
}

/// Checks a DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn validate_label(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(NameError::TooLong {
            what,
            value: value.to_owned(),
        });
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !value.chars().all(ok_char)
        || !ends_ok(value.chars().next())
        || !ends_ok(value.chars().last())
    {
        return Err(NameError::Invalid {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qualified_and_plain_names() {
        let r = FunctionRef::parse("echo.openfaas-fn", None).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_str()),
            ("echo", "openfaas-fn")
        );
        let r = FunctionRef::parse("echo", Some("dev")).unwrap();
        assert_eq!((r.name.as_str(), r.namespace.as_str()), ("echo", "dev"));
        let r = FunctionRef::parse("echo.staging", Some("dev")).unwrap();
        assert_eq!(r.namespace, "staging");
        assert_eq!(
            FunctionRef::parse("echo", None).unwrap().to_string(),
            "echo"
        );
        assert_eq!(
            FunctionRef::parse("echo.dev", None).unwrap().to_string(),
            "echo.dev"
        );
    }

    #[test]
    fn rejects_invalid_labels() {
        for bad in [
            "",
            "Echo",
            "-echo",
            "echo-",
            "ec_ho",
            "ec ho",
            "échо",
            &"a".repeat(64),
        ] {
            assert!(FunctionRef::parse(bad, None).is_err(), "{bad:?} accepted");
        }
        assert!(FunctionRef::parse("echo.Bad", None).is_err());
        assert!(FunctionRef::parse("echo.", None).is_err());
        assert!(FunctionRef::parse("echo.", Some("dev")).is_err());
        assert!(FunctionRef::parse(".openfaas-fn", None).is_err());
        assert!(FunctionRef::parse("a", None).is_ok());
        // Split at the last dot, as OpenFaaS does: the namespace is the valid `c`, and the name
        // `a.b` is what is refused (the first dot would have blamed the namespace `b.c`).
        assert_eq!(
            FunctionRef::parse("a.b.c", None),
            Err(NameError::Invalid {
                what: "function name",
                value: "a.b".into()
            })
        );
        assert!(matches!(
            FunctionRef::parse("echo..dev", Some("x")),
            Err(NameError::Invalid {
                what: "function name",
                ..
            })
        ));
        assert!(FunctionRef::parse(&"a".repeat(63), None).is_ok());
    }
}
