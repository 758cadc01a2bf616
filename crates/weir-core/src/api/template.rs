//! Values with placeholders: `/users/{parent.id}/orders`, `since={cursor}`. A placeholder
//! names a variable the collection fills (the incremental cursor, a parent record's
//! field); `{{` and `}}` are literal braces. Parsed once, at submission, so a misspelt
//! variable is refused there, not at the first request.

use std::collections::BTreeMap;

/// The variables a placeholder may name: `cursor`, or a field of the parent record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// The incremental cursor's start value.
    Cursor,
    /// A field of the parent resource's record (`parent.id`, `parent.owner.login`).
    Parent(Vec<String>),
}

/// A parsed value: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
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
        Ok(Template { parts })
    }

    /// The variables it names.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Text(_) => None,
        })
    }

    /// Fills the placeholders from `values`; the error names a variable without a value.
    pub fn render(&self, values: &Values) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&values.get(v).ok_or_else(|| format!("{} has no value here", show(v)))?),
            }
        }
        Ok(out)
    }
}

fn var(name: &str) -> Result<Var, String> {
    if name == "cursor" {
        return Ok(Var::Cursor);
    }
    if let Some(path) = name.strip_prefix("parent.") {
        let fields: Vec<String> = path.split('.').map(str::to_string).collect();
        if fields.iter().any(|f| f.is_empty()) {
            return Err(format!("{{{name}}} names an empty field"));
        }
        return Ok(Var::Parent(fields));
    }
    Err(format!("unknown placeholder {{{name}}} (known: {{cursor}}, {{parent.<field>}})"))
}

fn show(v: &Var) -> String {
    match v {
        Var::Cursor => "{cursor}".into(),
        Var::Parent(f) => format!("{{parent.{}}}", f.join(".")),
    }
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
            Var::Parent(path) => {
                let mut at = self.parent.as_ref()?;
                for f in path {
                    at = at.get(f)?;
                }
                Some(match at {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => return None,
                    other => other.to_string(),
                })
            }
        }
    }
}

/// Parses every template of a map; the error names the key.
pub fn parse_map(what: &str, m: &BTreeMap<String, String>) -> Result<BTreeMap<String, Template>, String> {
    m.iter().map(|(k, v)| Template::parse(v).map(|t| (k.clone(), t)).map_err(|e| format!("{what}.{k}: {e}"))).collect()
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
        let nested = Template::parse("{parent.owner.login}").expect("parses");
        let v = Values { parent: Some(json!({"owner": {"login": "ada"}})), ..Default::default() };
        assert_eq!(nested.render(&v).expect("renders"), "ada");
    }
}
