//! One walk over a JSON value for everything that fills placeholders in strings: a
//! trigger's `$data.…`, a schedule's `$schedule.…`, an API body's `{param}`.

use serde_json::Value;

/// `v` with each string `f` answers for replaced (`Some`), every other value as it was.
/// The first error stops the walk.
pub fn map_strings(v: &Value, f: &dyn Fn(&str) -> Result<Option<Value>, String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => f(s)?.unwrap_or_else(|| v.clone()),
        Value::Array(a) => Value::Array(a.iter().map(|x| map_strings(x, f)).collect::<Result<_, _>>()?),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| map_strings(x, f).map(|x| (k.clone(), x))).collect::<Result<_, _>>()?)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn strings_are_replaced_at_any_depth_and_the_rest_kept() {
        let v = json!({"a": "x", "b": [1, "x", {"c": "y"}], "d": null});
        let f = |s: &str| Ok((s == "x").then(|| json!(42)));
        assert_eq!(super::map_strings(&v, &f), Ok(json!({"a": 42, "b": [1, 42, {"c": "y"}], "d": null})));
        let fail = |s: &str| if s == "y" { Err("no y".to_string()) } else { Ok(None) };
        assert_eq!(super::map_strings(&v, &fail), Err("no y".into()));
    }
}
