//! Label selectors, validated once and matched many times.
//!
//! A `LabelSelector` from the API is turned into a [`Selector`] up front so
//! that an invalid one is found (and reported) at compile time, never
//! half-applied: an invalid selector matches nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// matchLabels entries and `In`.
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A validated selector: every requirement must hold (AND); no requirement
/// selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// Why a selector cannot be used; `field` is relative to the selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

impl Selector {
    /// The selector that selects everything (`{}`).
    pub fn everything() -> Self {
        Selector { reqs: Vec::new() }
    }

    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn parse(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(ml) = &sel.match_labels {
            for (k, v) in ml {
                check_key(k).map_err(|m| SelectorError { field: format!("matchLabels[{k}]"), message: m })?;
                reqs.push(Requirement::In(k.clone(), vec![v.clone()]));
            }
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            check_key(&e.key).map_err(|m| SelectorError { field: format!("{field}.key"), message: m })?;
            let values = e.values.clone().unwrap_or_default();
            let req = match e.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(SelectorError {
                            field: format!("{field}.values"),
                            message: format!("operator {} needs at least one value", e.operator),
                        });
                    }
                    let mut values = values;
                    values.sort();
                    values.dedup();
                    if e.operator == "In" {
                        Requirement::In(e.key.clone(), values)
                    } else {
                        Requirement::NotIn(e.key.clone(), values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(SelectorError {
                            field: format!("{field}.values"),
                            message: format!("operator {} takes no values; remove them", e.operator),
                        });
                    }
                    if e.operator == "Exists" {
                        Requirement::Exists(e.key.clone())
                    } else {
                        Requirement::DoesNotExist(e.key.clone())
                    }
                }
                other => {
                    return Err(SelectorError {
                        field: format!("{field}.operator"),
                        message: format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
                    })
                }
            };
            reqs.push(req);
        }
        // Canonical order so equal selectors compare (and cache) equal.
        reqs.sort();
        reqs.dedup();
        Ok(Selector { reqs })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            // NotIn matches when the key is absent, as in Kubernetes.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("label key is empty".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }
    fn sel(ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: if ml.is_empty() { None } else { Some(labels(ml)) },
            match_expressions: if me.is_empty() { None } else { Some(me) },
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert!(s.is_everything());
    }

    #[test]
    fn match_labels_requires_every_pair() {
        let s = Selector::parse(&sel(&[("a", "1"), ("b", "2")], vec![])).unwrap();
        assert!(s.matches(&labels(&[("a", "1"), ("b", "2"), ("c", "3")])));
        assert!(!s.matches(&labels(&[("a", "1")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "3")])));
    }

    #[test]
    fn in_operator_matches_any_listed_value() {
        let s = Selector::parse(&sel(&[], vec![expr("a", "In", Some(&["1", "2"]))])).unwrap();
        assert!(s.matches(&labels(&[("a", "2")])));
        assert!(!s.matches(&labels(&[("a", "3")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn not_in_matches_absent_key_and_other_values() {
        let s = Selector::parse(&sel(&[], vec![expr("a", "NotIn", Some(&["1"]))])).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "2")])));
        assert!(!s.matches(&labels(&[("a", "1")])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let e = Selector::parse(&sel(&[], vec![expr("a", "Exists", None)])).unwrap();
        let d = Selector::parse(&sel(&[], vec![expr("a", "DoesNotExist", Some(&[]))])).unwrap();
        assert!(e.matches(&labels(&[("a", "")])));
        assert!(!e.matches(&labels(&[("b", "")])));
        assert!(!d.matches(&labels(&[("a", "x")])));
        assert!(d.matches(&labels(&[("b", "x")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = Selector::parse(&sel(&[("a", "1")], vec![expr("b", "Exists", None)])).unwrap();
        assert!(s.matches(&labels(&[("a", "1"), ("b", "x")])));
        assert!(!s.matches(&labels(&[("a", "1")])));
        assert!(!s.matches(&labels(&[("b", "x")])));
    }

    #[test]
    fn unknown_operator_is_invalid() {
        let err = Selector::parse(&sel(&[], vec![expr("a", "in", Some(&["1"]))])).unwrap_err();
        assert_eq!(err.field, "matchExpressions[0].operator");
    }

    #[test]
    fn in_or_not_in_without_values_is_invalid() {
        for op in ["In", "NotIn"] {
            let err = Selector::parse(&sel(&[], vec![expr("a", op, None)])).unwrap_err();
            assert_eq!(err.field, "matchExpressions[0].values");
            assert!(Selector::parse(&sel(&[], vec![expr("a", op, Some(&[]))])).is_err());
        }
    }

    #[test]
    fn exists_with_values_is_invalid() {
        assert!(Selector::parse(&sel(&[], vec![expr("a", "Exists", Some(&["x"]))])).is_err());
        assert!(Selector::parse(&sel(&[], vec![expr("a", "DoesNotExist", Some(&["x"]))])).is_err());
    }

    #[test]
    fn equal_selectors_in_different_order_are_equal() {
        let a = Selector::parse(&sel(&[("a", "1")], vec![expr("b", "In", Some(&["2", "1"]))])).unwrap();
        let b = Selector::parse(&sel(&[], vec![expr("b", "In", Some(&["1", "2"])), expr("a", "In", Some(&["1"]))]))
            .unwrap();
        assert_eq!(a, b);
    }
}
