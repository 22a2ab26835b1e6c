//! A JSON Schema checker for the subset the repository's schemas use (`type` as a name or a list,
//! `const`, `minimum`, `properties`, `required`, `additionalProperties` as false or a schema,
//! `items`), so that tests hold the agent's real output to the schema file without a validator
//! dependency. A keyword outside the subset is an error, never silently ignored.

use serde_json::Value;

const KNOWN: [&str; 12] = [
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "const",
    "minimum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
];

/// Every way `value` breaks `schema`, each with its JSON path.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "$", &mut errors);
    errors
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_u64() || value.is_i64(),
        _ => false,
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        errors.push(format!("{path}: the schema here is not an object"));
        return;
    };
    for key in schema.keys() {
        if !KNOWN.contains(&key.as_str()) {
            errors.push(format!("{path}: schema keyword {key} is outside what this checker knows"));
        }
    }
    if let Some(expected) = schema.get("type") {
        let names: Vec<&str> = match expected {
            Value::String(name) => vec![name.as_str()],
            Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !names.iter().any(|name| type_matches(name, value)) {
            errors.push(format!("{path}: {value} is not of type {expected}"));
            return;
        }
    }
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        errors.push(format!("{path}: {value} is not {expected}"));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{path}: {value} is none of {options:?}"));
    }
    if let (Some(minimum), Some(number)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64())
        && number < minimum
    {
        errors.push(format!("{path}: {number} is below {minimum}"));
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = required.as_str()
                && !object.contains_key(name)
            {
                errors.push(format!("{path}: required field {name} is missing"));
            }
        }
        for (name, field) in object {
            let field_path = format!("{path}.{name}");
            match (properties.and_then(|p| p.get(name)), schema.get("additionalProperties")) {
                (Some(field_schema), _) => check(field_schema, field, &field_path, errors),
                (None, Some(Value::Bool(false))) => errors.push(format!("{field_path}: not in the schema")),
                (None, Some(extra)) if extra.is_object() => check(extra, field, &field_path, errors),
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            check(items, item, &format!("{path}[{index}]"), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_checker_catches_what_it_should() {
        let schema = json!({
            "type": "object", "additionalProperties": false, "required": ["a", "b"],
            "properties": {"a": {"type": "integer", "minimum": 0}, "b": {"type": ["string", "null"]},
                           "c": {"type": "array", "items": {"const": 1}}}
        });
        assert!(validate(&schema, &json!({"a": 1, "b": null, "c": [1, 1]})).is_empty());
        let errors = validate(&schema, &json!({"a": -1, "c": [1, 2], "d": true}));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(validate(&json!({"oneOf": []}), &json!(1))[0].contains("outside"));
    }
}
