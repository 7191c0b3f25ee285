//! Labels (`role=prod,team=a`): an app may reach a service only when the two share at
//! least one label=value. They parse from the flag's text once; in JSON they are an
//! object (`{"role":"prod","team":"a"}`), checked on the way in as the flag is.

use std::fmt;
use std::str::FromStr;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Label=value pairs in the order given, each once. A name may carry several values
/// (`role=a,role=b`): the app is in both groups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
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
    #[error("label '{0}' has '=' in its name")]
    EqualsInName(String),
}

/// Checks one pair; `item` is how it reads in the flag, for the message.
fn check(k: &str, v: &str, item: &str) -> Result<(), LabelError> {
    if k.is_empty() {
        return Err(LabelError::EmptyKey(item.into()));
    }
    if v.is_empty() {
        return Err(LabelError::EmptyValue(item.into()));
    }
    if k.contains('=') {
        return Err(LabelError::EqualsInName(item.into()));
    }
    let bad = |c: char| c.is_whitespace() || c == ',';
    if k.contains(bad) || v.contains(bad) {
        return Err(LabelError::BadChar(item.into()));
    }
    Ok(())
}

impl Labels {
    /// Parses a comma-separated list. An empty string is no labels (an app that can
    /// reach nothing labelled and that nothing labelled can reach).
    pub fn parse(csv: &str) -> Result<Labels, LabelError> {
        let mut out = Labels::default();
        for item in csv.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| LabelError::NoEquals(item.into()))?;
            out.push(k.trim(), v.trim(), item)?;
        }
        Ok(out)
    }

    fn push(&mut self, k: &str, v: &str, item: &str) -> Result<(), LabelError> {
        check(k, v, item)?;
        let pair = (k.to_string(), v.to_string());
        if !self.0.contains(&pair) {
            self.0.push(pair);
        }
        Ok(())
    }

    /// True when the two sets have a label=value in common.
    pub fn shares(&self, other: &Labels) -> bool {
        self.0.iter().any(|p| other.0.contains(p))
    }

    /// The selectors the manual shows in its ZONES column (`zone==default`), one per
    /// label.
    pub fn selectors(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}=={v}")).collect()
    }
}

impl FromStr for Labels {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Labels, LabelError> {
        Labels::parse(s)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&items.join(","))
    }
}

/// An object, in the order given; a name with several values appears once per value
/// (JSON allows repeated names, and reading keeps them all).
impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of label names to values")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Labels, M::Error> {
                let mut out = Labels::default();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    out.push(&k, &v, &format!("{k}={v}")).map_err(serde::de::Error::custom)?;
                }
                Ok(out)
            }
        }
        d.deserialize_map(Pairs)
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
        assert_eq!(Labels::parse("zone=default,team=a").unwrap().selectors(), ["zone==default", "team==a"]);
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

    #[test]
    fn json_is_an_object_checked_like_the_flag() {
        let l: Labels = "zone=default,role=a,role=b".parse().unwrap();
        let j = serde_json::to_string(&l).unwrap();
        assert_eq!(j, r#"{"zone":"default","role":"a","role":"b"}"#);
        assert_eq!(serde_json::from_str::<Labels>(&j).unwrap(), l);
        assert_eq!(serde_json::from_str::<Labels>("{}").unwrap(), Labels::default());
        for (bad, want) in [
            (r#"{"role":""}"#, "label 'role=' has an empty value"),
            (r#"{"":"x"}"#, "label '=x' has an empty name"),
            (r#"{"a b":"x"}"#, "label 'a b=x' contains a space or comma"),
            (r#"{"a":"x,y"}"#, "label 'a=x,y' contains a space or comma"),
            (r#"{"a=b":"x"}"#, "label 'a=b=x' has '=' in its name"),
            (r#"{"a":1}"#, "invalid type"),
            (r#""zone=default""#, "an object of label names to values"),
        ] {
            let e = serde_json::from_str::<Labels>(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
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
            prop_assert_eq!(serde_json::from_str::<Labels>(&serde_json::to_string(&la).unwrap()).unwrap(), la.clone());
            prop_assert_eq!(la.shares(&la), !a.is_empty());
        }
    }
}
