//! Labels (`role=prod,team=a`): an app may reach a service only when the two share at
//! least one label=value.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Labels(Vec<(String, String)>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label '{0}' is not of the form label=value")]
    NoEquals(String),
    #[error("label '{0}' has an empty name")]
    EmptyKey(String),
    #[error("label '{0}' has an empty value")]
    EmptyValue(String),
    #[error("label '{0}' contains a space or comma")]
    BadChar(String),
}

impl Labels {
    /// Parses a comma-separated list. An empty string is no labels (an app that can
    /// reach nothing labelled and that nothing labelled can reach).
    pub fn parse(csv: &str) -> Result<Labels, LabelError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for item in csv.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| LabelError::NoEquals(item.into()))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(LabelError::EmptyKey(item.into()));
            }
            if v.is_empty() {
                return Err(LabelError::EmptyValue(item.into()));
            }
            if k.contains(char::is_whitespace) || v.contains(char::is_whitespace) {
                return Err(LabelError::BadChar(item.into()));
            }
            let pair = (k.to_string(), v.to_string());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        Ok(Labels(out))
    }

    /// True when the two sets have a label=value in common.
    pub fn shares(&self, other: &Labels) -> bool {
        self.0.iter().any(|p| other.0.contains(p))
    }

    /// The selector form the manual shows in its ZONES column: `[zone==default]`.
    pub fn selectors(&self) -> String {
        let inner: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}=={v}")).collect();
        format!("[{}]", inner.join(","))
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_shares() {
        let prod = Labels::parse("role=prod,team=a").unwrap();
        let test = Labels::parse("role=test").unwrap();
        let a = Labels::parse("team=a").unwrap();
        assert!(!prod.shares(&test));
        assert!(prod.shares(&a));
        assert!(a.shares(&prod));
        assert_eq!(prod.to_string(), "role=prod,team=a");
        assert_eq!(Labels::parse("zone=default").unwrap().selectors(), "[zone==default]");
    }

    #[test]
    fn no_labels_share_nothing() {
        let none = Labels::parse("").unwrap();
        assert!(!none.shares(&none));
        assert!(!none.shares(&Labels::parse("zone=default").unwrap()));
    }

    #[test]
    fn malformed_is_named() {
        assert_eq!(Labels::parse("role"), Err(LabelError::NoEquals("role".into())));
        assert_eq!(Labels::parse("=x"), Err(LabelError::EmptyKey("=x".into())));
        assert_eq!(Labels::parse("role=,a=b"), Err(LabelError::EmptyValue("role=".into())));
        assert!(Labels::parse("a b=c").is_err());
        assert_eq!(LabelError::NoEquals("role".into()).to_string(), "label 'role' is not of the form label=value");
    }

    proptest! {
        #[test]
        fn sharing_is_symmetric_and_display_roundtrips(
            a in proptest::collection::vec(("[a-c]{1,2}", "[x-z]{1,2}"), 0..5),
            b in proptest::collection::vec(("[a-c]{1,2}", "[x-z]{1,2}"), 0..5),
        ) {
            let la = Labels::parse(&a.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")).unwrap();
            let lb = Labels::parse(&b.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")).unwrap();
            prop_assert_eq!(la.shares(&lb), lb.shares(&la));
            prop_assert_eq!(la.shares(&lb), a.iter().any(|p| b.contains(p)));
            prop_assert_eq!(Labels::parse(&la.to_string()).unwrap(), la.clone());
            prop_assert_eq!(la.shares(&la), !a.is_empty());
        }
    }
}
