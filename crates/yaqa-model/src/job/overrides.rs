//! Per-module overrides of a quantization run (`quantize --override 'REGEX=key:value,…'`): layers whose
//! full Hugging Face name (`model.layers.3.mlp.down_proj`) the regular expression matches take another
//! quantizer, INT width, group or method than the run's, or stay at the checkpoint's precision
//! (`keep`). The usual use: keep `down_proj` or the first and last blocks at more bits.
//!
//! Rules are tried in the order given and the **first** that matches a layer decides it, so a narrow rule
//! goes before a broad one. Every rule must match at least one layer (a typo would otherwise change
//! nothing without a word). The rules are recorded in the quantized file's run header (`overrides`,
//! with the layers kept under `kept`), and each quantized layer's entry records its own quantizer and
//! report as before; kept layers are absent from the file, and every reader (evaluation, the bf16
//! export) takes them from the original checkpoint, as the file says.

use regex::Regex;
use serde_json::{Value, json};
use yaqa_core::layer::Method;

use crate::job::{Grid, QuantSpec};
use crate::transformer::weights::LayerId;

/// What one rule changes; `None` keeps the run's setting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    /// Leave the layer unquantized (at the checkpoint's precision).
    pub keep: bool,
    pub grid: Option<Grid>,
    /// `Some(None)`: no groups (`group:none`); `Some(Some(g))`: groups of `g` columns.
    pub group: Option<Option<usize>>,
    pub method: Option<Method>,
}

/// One `REGEX=rule` as given, with its compiled expression.
#[derive(Clone, Debug)]
pub struct Override {
    /// The rule as the user wrote it (recorded in the output).
    pub text: String,
    pub regex: Regex,
    pub rule: Rule,
}

impl PartialEq for Override {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// The methods a rule may name: those that round one layer from factors. Qronos and DAQ take their
/// statistics from the whole run (the sequential pipeline, the base checkpoint).
const METHODS: [Method; 4] = [Method::Rtn, Method::Gptq, Method::Ldlq, Method::Yaqa];

impl Override {
    /// Parses `REGEX=key:value,key:value` or `REGEX=keep`. Keys: `quantizer` (any `--quantizer`
    /// name), `bits` (the INT grid of that width: `bits:8` = `quantizer:int8`), `group` (a group size
    /// or `none`), `method` (`rtn`, `gptq`, `ldlq`, `yaqa`). The expression is matched anywhere in the
    /// layer's name (anchor it with `^…$` to match whole names); the last `=` separates it from the
    /// rule, so the expression may contain `=`.
    ///
    /// **Errors**: a missing `=`, an invalid expression, an unknown key or value, a key given twice,
    /// `keep` with other keys, an empty rule; each message quotes the rule.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: String| format!("--override '{text}': {why}");
        let (pattern, rule_text) = text
            .rsplit_once('=')
            .ok_or_else(|| bad("expected REGEX=key:value,… or REGEX=keep".into()))?;
        if pattern.is_empty() {
            return Err(bad("the regular expression before '=' is empty".into()));
        }
        let regex = Regex::new(pattern).map_err(|e| bad(format!("bad regular expression: {e}")))?;
        let mut rule = Rule::default();
        let mut seen = Vec::new();
        for item in rule_text.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(bad("an empty entry in the rule (expected key:value)".into()));
            }
            let (key, value) = item.split_once(':').unwrap_or((item, ""));
            if seen.contains(&key) {
                return Err(bad(format!("{key} given twice")));
            }
            seen.push(key);
            match (key, value) {
                ("keep", "") => rule.keep = true,
                ("quantizer", v) => rule.grid = Some(v.parse::<Grid>().map_err(bad)?),
                ("bits", v) => {
                    let grid = v
                        .parse::<u32>()
                        .ok()
                        .filter(|b| QuantSpec::BITS.contains(b))
                        .map(Grid::Int)
                        .ok_or_else(|| {
                            bad(format!("bits:{v}: the INT grids have 2, 3, 4 or 8 bits"))
                        })?;
                    rule.grid = Some(grid);
                }
                ("group", "none") => rule.group = Some(None),
                ("group", v) => {
                    let g = v.parse::<usize>().ok().filter(|&g| g > 0).ok_or_else(|| {
                        bad(format!("group:{v}: expected a group size > 0 or none"))
                    })?;
                    rule.group = Some(Some(g));
                }
                ("method", v) => {
                    let m = METHODS.into_iter().find(|m| m.name() == v).ok_or_else(|| {
                        bad(format!(
                            "method:{v}: expected one of {} (Qronos and DAQ work on the whole \
                             run, not one layer)",
                            METHODS.map(|m| m.name()).join(", ")
                        ))
                    })?;
                    rule.method = Some(m);
                }
                _ => {
                    return Err(bad(format!(
                        "unknown entry {item:?}: expected keep, quantizer:Q, bits:K, group:G|none \
                         or method:M"
                    )));
                }
            }
        }
        if seen.contains(&"quantizer") && seen.contains(&"bits") {
            return Err(bad("give quantizer or bits, not both".into()));
        }
        if rule.keep && seen.len() > 1 {
            return Err(bad(
                "keep leaves the layer unquantized: it takes no other entries".into(),
            ));
        }
        Ok(Self {
            text: text.to_string(),
            regex,
            rule,
        })
    }
}

/// The overrides of one run, in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides(pub Vec<Override>);

impl Overrides {
    /// Parses every `--override`.
    ///
    /// **Errors**: as [`Override::parse`].
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, String> {
        texts
            .iter()
            .map(|t| Override::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Layer `id`'s spec: the run's `base` with the first matching rule applied, `None` when that rule
    /// keeps the layer.
    pub fn spec_for(&self, base: &QuantSpec, id: LayerId) -> Option<QuantSpec> {
        let name = id.name();
        let Some(o) = self.0.iter().find(|o| o.regex.is_match(&name)) else {
            return Some(*base);
        };
        if o.rule.keep {
            return None;
        }
        let mut spec = *base;
        if let Some(grid) = o.rule.grid {
            spec.grid = grid;
        }
        if let Some(group) = o.rule.group {
            spec.group = group;
        }
        if let Some(method) = o.rule.method {
            spec.method = method;
        }
        Some(spec)
    }

    /// Every layer's spec (`None`: kept), in order.
    ///
    /// **Errors**: a rule that decides no layer of `layers`, naming it: one that matches none, or one
    /// whose every match an earlier rule decides.
    pub fn plan(
        &self,
        base: &QuantSpec,
        layers: &[LayerId],
    ) -> crate::Result<Vec<(LayerId, Option<QuantSpec>)>> {
        let names: Vec<String> = layers.iter().map(|id| id.name()).collect();
        for (k, o) in self.0.iter().enumerate() {
            let matched: Vec<&String> = names.iter().filter(|n| o.regex.is_match(n)).collect();
            if matched.is_empty() {
                crate::bail!(
                    "--override '{}' matches no layer of the model (layers are named like {})",
                    o.text,
                    names
                        .first()
                        .map_or("model.layers.0.mlp.down_proj", String::as_str)
                );
            }
            if let Some(earlier) = matched
                .iter()
                .all(|n| self.0[..k].iter().any(|e| e.regex.is_match(n)))
                .then(|| {
                    self.0[..k]
                        .iter()
                        .find(|e| e.regex.is_match(matched[0]))
                        .map(|e| e.text.as_str())
                })
                .flatten()
            {
                crate::bail!(
                    "--override '{}' decides no layer: an earlier rule ('{earlier}') takes every \
                     layer it matches ({}, …); the first matching rule decides, so put the narrower \
                     rule first",
                    o.text,
                    matched[0]
                );
            }
        }
        Ok(layers
            .iter()
            .map(|&id| (id, self.spec_for(base, id)))
            .collect())
    }

    /// The rules as recorded in the run header.
    pub fn to_json(&self) -> Value {
        json!(self.0.iter().map(|o| o.text.as_str()).collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::weights::LinearKind;

    fn id(block: usize, kind: LinearKind) -> LayerId {
        LayerId { block, kind }
    }

    #[test]
    fn first_matching_rule_decides() {
        let o = Overrides::parse(&[
            r"layers\.0\.mlp\.down_proj$=keep",
            r"down_proj=bits:8,method:gptq",
            r"^model\.layers\.1\.=quantizer:e8p,group:none",
        ])
        .unwrap();
        let base = QuantSpec {
            group: Some(64),
            ..QuantSpec::default()
        };
        assert_eq!(o.spec_for(&base, id(0, LinearKind::Down)), None);
        let down1 = o.spec_for(&base, id(1, LinearKind::Down)).unwrap();
        assert_eq!(
            (down1.grid, down1.method, down1.group),
            (Grid::Int(8), Method::Gptq, Some(64))
        );
        let q1 = o.spec_for(&base, id(1, LinearKind::Q)).unwrap();
        assert_eq!(
            (q1.grid, q1.group, q1.method),
            (Grid::E8p, None, Method::Yaqa)
        );
        assert_eq!(o.spec_for(&base, id(2, LinearKind::Q)), Some(base));
        let layers = [id(0, LinearKind::Down), id(1, LinearKind::Q)];
        let err = o.plan(&base, &layers).unwrap_err().to_string();
        assert!(
            err.contains("'down_proj=bits:8,method:gptq' decides no layer")
                && err.contains(r"earlier rule ('layers\.0\.mlp\.down_proj$=keep')"),
            "{err}"
        );
        let err = o.plan(&base, &layers[1..]).unwrap_err().to_string();
        assert!(err.contains("matches no layer"), "{err}");
        let plan = o.plan(&base, &[layers[1], id(2, LinearKind::Down)]);
        assert!(plan.is_err(), "rule 1 matches nothing here");
        let plan = Overrides(o.0[1..].to_vec())
            .plan(&base, &[layers[1], id(2, LinearKind::Down)])
            .unwrap();
        assert_eq!(plan[1].1.unwrap().grid, Grid::Int(8));
    }

    #[test]
    fn bad_rules_are_refused_quoting_them() {
        for (text, words) in [
            ("down_proj", "expected REGEX=key:value"),
            ("=keep", "is empty"),
            ("(down=keep", "bad regular expression"),
            ("down=bits:5", "2, 3, 4 or 8 bits"),
            ("down=quantizer:int5", "is not a quantizer"),
            ("down=method:qronos", "work on the whole run"),
            ("down=group:0", "group size > 0"),
            ("down=keep,bits:8", "takes no other entries"),
            ("down=bits:8,bits:4", "bits given twice"),
            ("down=bits:8,quantizer:e8p", "not both"),
            ("down=bits:8,", "empty entry"),
            ("down=scale:2", "unknown entry"),
        ] {
            let err = Override::parse(text).unwrap_err();
            assert!(err.contains(words), "{text}: {err}");
            assert!(err.contains(&format!("'{text}'")), "{text}: {err}");
        }
        // The last '=' splits, so an expression may hold one.
        let o = Override::parse("a=b=keep").unwrap();
        assert_eq!(o.regex.as_str(), "a=b");
    }
}
