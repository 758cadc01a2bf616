//! Values with placeholders: `/users/{parent.id}/orders`, `since={cursor}`,
//! `region={params.region}`. A placeholder names a variable: the job's parameters are
//! filled at submission ([`Template::bind_params`]); the incremental cursor and a parent
//! record's fields by the collection, per request. `{{` and `}}` are literal braces.
//! Parsed at submission, so a misspelt variable is refused there, not at the first request.

use std::collections::BTreeMap;

/// The variables a placeholder may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// The incremental cursor's start value: the stored mark, else the initial value.
    Cursor,
    /// A field of the parent resource's record (`parent.id`, `parent.owner.login`).
    Parent(Vec<String>),
    /// A job parameter (`params.region`, `params.window.start`), filled at submission.
    Param(Vec<String>),
}

/// A parsed value: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// Parsed with [`Template::parse_lenient`]: braces are literal unless they form a
    /// placeholder.
    lenient: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

impl Template {
    /// Parses `text`; the error names the placeholder that is wrong.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("{text:?}: a placeholder is not closed with }}")),
                        }
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(var(name.trim()).map_err(|e| format!("{text:?}: {e}"))?));
                }
                '}' => return Err(format!("{text:?}: a lone }} (write }}}} for a brace)")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts, lenient: false })
    }

    /// Parses a JSON body's text, where braces are common (a GraphQL query): a `{` starts a
    /// placeholder only when `{cursor}`, `{parent.…}` or `{params.…}` follows; every
    /// other brace is literal and nothing is escaped.
    pub fn parse_lenient(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('{') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'));
            let placeholder = name_len
                .filter(|&n| after[n..].starts_with('}'))
                .and_then(|n| var(&after[..n]).ok().map(|v| (n, v)))
                .filter(|(n, _)| *n > 0);
            match placeholder {
                Some((n, v)) => {
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(v));
                    rest = &after[n + 1..];
                }
                None => {
                    lit.push('{');
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Template { parts, lenient: true }
    }

    /// The variables it names.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// Fills the job-parameter placeholders from `params` (the job's), leaving the others;
    /// the error names a parameter the job does not have.
    pub fn bind_params(&self, params: Option<&serde_json::Value>) -> Result<Template, String> {
        let mut parts: Vec<Part> = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            let text = match p {
                Part::Var(Var::Param(path)) => params.and_then(|p| field(p, path)).ok_or_else(|| {
                    format!("{} names a parameter the job does not give", show(&Var::Param(path.clone())))
                })?,
                Part::Text(t) => t.clone(),
                other => {
                    parts.push(other.clone());
                    continue;
                }
            };
            match parts.last_mut() {
                Some(Part::Text(prev)) => prev.push_str(&text),
                _ => parts.push(Part::Text(text)),
            }
        }
        Ok(Template { parts, lenient: self.lenient })
    }

    /// Fills the placeholders from `values`; the error names a variable without a value.
    pub fn render(&self, values: &Values) -> Result<String, String> {
        self.render_with(values, &|v| v.to_string())
    }

    /// Fills the placeholders from `values`, each value passed through `encode` (a URL
    /// path's percent-encoding, say).
    pub fn render_with(&self, values: &Values, encode: &dyn Fn(&str) -> String) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    out.push_str(&encode(&values.get(v).ok_or_else(|| format!("{} has no value here", show(v)))?))
                }
            }
        }
        Ok(out)
    }
}

impl std::fmt::Display for Template {
    /// The template as written: literal braces doubled, placeholders as `{name}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.parts {
            match p {
                Part::Text(t) if self.lenient => f.write_str(t)?,
                Part::Text(t) => f.write_str(&t.replace('{', "{{").replace('}', "}}"))?,
                Part::Var(v) => f.write_str(&show(v))?,
            }
        }
        Ok(())
    }
}

fn var(name: &str) -> Result<Var, String> {
    if name == "cursor" {
        return Ok(Var::Cursor);
    }
    let path = |rest: &str| -> Result<Vec<String>, String> {
        let fields: Vec<String> = rest.split('.').map(str::to_string).collect();
        if fields.iter().any(|f| f.is_empty()) {
            return Err(format!("{{{name}}} names an empty field"));
        }
        Ok(fields)
    };
    if let Some(rest) = name.strip_prefix("parent.") {
        return Ok(Var::Parent(path(rest)?));
    }
    if let Some(rest) = name.strip_prefix("params.") {
        return Ok(Var::Param(path(rest)?));
    }
    Err(format!("unknown placeholder {{{name}}} (known: {{cursor}}, {{parent.<field>}}, {{params.<name>}})"))
}

fn show(v: &Var) -> String {
    match v {
        Var::Cursor => "{cursor}".into(),
        Var::Parent(f) => format!("{{parent.{}}}", f.join(".")),
        Var::Param(f) => format!("{{params.{}}}", f.join(".")),
    }
}

/// A field of a JSON object by path, as text (a string as it is, other values as JSON;
/// null or absent: none).
fn field(v: &serde_json::Value, path: &[String]) -> Option<String> {
    let mut at = v;
    for f in path {
        at = at.get(f)?;
    }
    Some(match at {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => return None,
        other => other.to_string(),
    })
}

/// What placeholders are filled with for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Values {
    pub cursor: Option<String>,
    /// The parent record, when the resource has a parent.
    pub parent: Option<serde_json::Value>,
}

impl Values {
    fn get(&self, v: &Var) -> Option<String> {
        match v {
            Var::Cursor => self.cursor.clone(),
            Var::Parent(path) => field(self.parent.as_ref()?, path),
            // Bound at submission; one left here has no value.
            Var::Param(_) => None,
        }
    }
}

/// Parses every template of a map; the error names the key.
pub fn parse_map(what: &str, m: &BTreeMap<String, String>) -> Result<BTreeMap<String, Template>, String> {
    m.iter().map(|(k, v)| Template::parse(v).map(|t| (k.clone(), t)).map_err(|e| format!("{what}.{k}: {e}"))).collect()
}

/// Every string of a JSON body as a (lenient) template, by its JSON pointer under `what`.
pub fn json_templates(what: &str, v: &serde_json::Value) -> Vec<(String, Template)> {
    let mut out = Vec::new();
    walk(what, v, &mut |at, s| out.push((at.to_string(), Template::parse_lenient(s))));
    out
}

fn walk(at: &str, v: &serde_json::Value, f: &mut dyn FnMut(&str, &str)) {
    match v {
        serde_json::Value::String(s) => f(at, s),
        serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| walk(&format!("{at}/{i}"), x, f)),
        serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| walk(&format!("{at}/{k}"), x, f)),
        _ => {}
    }
}

/// A JSON body with its strings' placeholders filled by `fill` (binding the job's
/// parameters, or rendering a request's values).
pub fn map_json(
    v: &serde_json::Value,
    fill: &dyn Fn(&Template) -> Result<String, String>,
) -> Result<serde_json::Value, String> {
    crate::json::map_strings(v, &|s| {
        let t = Template::parse_lenient(s);
        if t.vars().next().is_none() {
            Ok(None)
        } else {
            fill(&t).map(|s| Some(serde_json::Value::String(s)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_parse_render_and_name_what_is_wrong() {
        let t = Template::parse("/users/{parent.id}/orders?since={cursor}&x={{y}}").expect("parses");
        assert_eq!(t.vars().count(), 2);
        let v = Values { cursor: Some("2026-11-01".into()), parent: Some(json!({"id": 42})) };
        assert_eq!(t.render(&v).expect("renders"), "/users/42/orders?since=2026-11-01&x={y}");
        let e = t.render(&Values::default()).expect_err("no parent");
        assert!(e.contains("{parent.id}"), "{e}");
        assert!(Template::parse("{nope}").expect_err("unknown").contains("unknown placeholder {nope}"));
        assert!(Template::parse("{cursor").expect_err("open").contains("not closed"));
        assert!(Template::parse("a}b").expect_err("lone").contains("lone }"));
        assert!(Template::parse("{parent.}").expect_err("empty").contains("empty field"));
        let p = Template::parse("/r/{params.region}/{cursor}?q={{x}}").expect("parses");
        let bound = p.bind_params(Some(&json!({"region": "eu-{1}"}))).expect("binds");
        assert_eq!(bound.to_string(), "/r/eu-{{1}}/{cursor}?q={{x}}", "a bound value's braces stay literal");
        assert_eq!(Template::parse(&bound.to_string()).expect("reparses"), bound);
        let e = p.bind_params(Some(&json!({}))).expect_err("missing");
        assert!(e.contains("{params.region} names a parameter the job does not give"), "{e}");
        let gql = Template::parse_lenient("{ orders(after: \"{cursor}\", region: {params.r}) { id } {x} {}");
        assert_eq!(gql.vars().count(), 2);
        let bound = gql.bind_params(Some(&json!({"r": "eu"}))).expect("binds");
        assert_eq!(bound.to_string(), "{ orders(after: \"{cursor}\", region: eu) { id } {x} {}");
        let v = Values { cursor: Some("c1".into()), ..Default::default() };
        assert_eq!(bound.render(&v).expect("renders"), "{ orders(after: \"c1\", region: eu) { id } {x} {}");
        let nested = Template::parse("{parent.owner.login}").expect("parses");
        let v = Values { parent: Some(json!({"owner": {"login": "ada"}})), ..Default::default() };
        assert_eq!(nested.render(&v).expect("renders"), "ada");
    }
}
