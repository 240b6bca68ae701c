//! Input and output mappings between a job's shared state and its Try requests and answers
//! (docs/api.md, "The Try body"), over RFC 6901 JSON Pointers.

use serde_json::{Map, Value};

use super::job::TrySpec;

/// Whether `ptr` is a syntactically valid JSON Pointer ("" or "/a/b", with `~0`/`~1` escapes only).
pub fn valid_pointer(ptr: &str) -> bool {
    if ptr.is_empty() {
        return true;
    }
    if !ptr.starts_with('/') {
        return false;
    }
    let mut chars = ptr.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// The most segments a mapping's pointer may have (the depth a request body may nest).
pub const MAX_POINTER_SEGMENTS: usize = 32;

/// The deepest a value the coordinator builds may nest arrays and objects: a shared state, a Try
/// body, a kept Try answer. Well under serde_json's recursion limit (128), so that whatever is
/// stored can be read back, also inside a larger document (a job's representation).
pub const MAX_BUILT_DEPTH: usize = 64;

/// How many segments a JSON Pointer has ("" none, "/a/b" two).
pub fn segments(ptr: &str) -> usize {
    ptr.bytes().filter(|&b| b == b'/').count()
}

/// How deep a write of `value` at `ptr` nests its document there: the containers on the way are
/// one level each, the value adds its own.
fn nests(ptr: &str, value: &Value) -> usize {
    segments(ptr) + depth(value)
}

/// How deep `value` nests arrays and objects: a scalar 0, `{}` or `[]` 1.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Write `value` at `ptr` inside `root`, creating objects on the way. An array index must exist,
/// or be `-` or the array's length to append. A write that would nest the result deeper than
/// `MAX_BUILT_DEPTH` is refused, so that no value the coordinator builds is one it cannot read.
pub fn pointer_set(root: &mut Value, ptr: &str, value: Value) -> Result<(), String> {
    let levels = nests(ptr, &value);
    if levels > MAX_BUILT_DEPTH {
        return Err(format!(
            "{ptr}: the value would nest {levels} levels deep there; at most {MAX_BUILT_DEPTH}"
        ));
    }
    if ptr.is_empty() {
        *root = value;
        return Ok(());
    }
    let tokens: Vec<String> = ptr.split('/').skip(1).map(unescape).collect();
    let mut cur = root;
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate() {
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        cur = match cur {
            Value::Object(map) => {
                if i == last {
                    map.insert(token.clone(), value);
                    return Ok(());
                }
                map.entry(token.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
            }
            Value::Array(items) => {
                let index = if token == "-" {
                    items.len()
                } else {
                    token
                        .parse::<usize>()
                        .map_err(|_| format!("{ptr}: {token:?} is not an array index"))?
                };
                if index > items.len() {
                    return Err(format!("{ptr}: index {index} is past the end of the array"));
                }
                if index == items.len() {
                    items.push(Value::Null);
                }
                if i == last {
                    items[index] = value;
                    return Ok(());
                }
                &mut items[index]
            }
            _ => return Err(format!("{ptr}: cannot write inside a scalar value")),
        };
    }
    Ok(())
}

/// How many bytes `value` takes serialized, without building the text.
fn serialized_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Write an output mapping's `value` at `ptr` inside a shared state, within the shared state's
/// limits: its depth (as `pointer_set`), its size (`MAX_SHARED_STATE_BYTES`), and an object at
/// its root. A write past them is not made (the state is left as it was), and says why.
pub fn write_shared(state: &mut Value, ptr: &str, value: Value) -> Result<(), String> {
    use super::request::MAX_SHARED_STATE_BYTES;
    let before = state.clone();
    pointer_set(state, ptr, value)?;
    let refused = if !state.is_object() {
        Some(format!("{ptr}: the shared state must stay a JSON object"))
    } else if serialized_len(state) > MAX_SHARED_STATE_BYTES {
        Some(format!(
            "{ptr}: the shared state would be larger than its limit of {} KiB",
            MAX_SHARED_STATE_BYTES / 1024
        ))
    } else {
        None
    };
    match refused {
        Some(why) => {
            *state = before;
            Err(why)
        }
        None => Ok(()),
    }
}

/// Apply a JSON Merge Patch (RFC 7396) to `target`: objects merge member by member, `null`
/// removes a member, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (key, value) in members {
            if value.is_null() {
                t.remove(key);
            } else {
                merge_patch(t.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The Try body: `body` (or `{}`), then each input mapping copies a shared-state value into it.
pub fn try_body(spec: &TrySpec, shared_state: &Value) -> Result<Value, String> {
    let mut body = spec
        .body
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()));
    for (target, source) in &spec.input_mapping {
        let value = shared_state.pointer(source).ok_or_else(|| {
            format!("inputMapping: shared state has no value at {source} (for {target})")
        })?;
        pointer_set(&mut body, target, value.clone())
            .map_err(|e| format!("inputMapping: cannot write the Try body at {e}"))?;
    }
    Ok(body)
}

/// Copy values from the Try answer into the shared state; returns a note for each mapping that
/// found nothing to copy (the reservation stands; the shared state is left as it was there).
/// The writes an answer's output mappings make to the shared state, in order: `(pointer into the
/// shared state, value)` for each source pointer the answer has.
pub fn output_writes(spec: &TrySpec, answer: &Value) -> Vec<(String, Value)> {
    spec.output_mapping
        .iter()
        .filter_map(|(target, source)| answer.pointer(source).map(|v| (target.clone(), v.clone())))
        // What `pointer_set` refuses is noted by `apply_output`, never written.
        .filter(|(target, v)| nests(target, v) <= MAX_BUILT_DEPTH)
        .collect()
}

pub fn apply_output(spec: &TrySpec, answer: &Value, shared_state: &mut Value) -> Vec<String> {
    let mut notes = Vec::new();
    for (target, source) in &spec.output_mapping {
        match answer.pointer(source) {
            Some(value) => {
                if let Err(e) = write_shared(shared_state, target, value.clone()) {
                    notes.push(format!("outputMapping: cannot write the shared state at {e}"));
                }
            }
            None => notes.push(format!(
                "outputMapping: the Try answer has no value at {source}; shared state {target} not set"
            )),
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(input: &[(&str, &str)], output: &[(&str, &str)], body: Option<Value>) -> TrySpec {
        TrySpec {
            task_url: crate::domain::TargetUrl::parse("http://p/try").expect("a URL"),
            body,
            input_mapping: input
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            output_mapping: output
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            task_max_ttl: 10.0,
            retry_policy: None,
        }
    }

    #[test]
    fn pointers_are_validated() {
        assert!(valid_pointer(""));
        assert!(valid_pointer("/a/b~0c/~1"));
        assert!(!valid_pointer("a/b"));
        assert!(!valid_pointer("/a~2"));
        assert!(!valid_pointer("/a~"));
    }

    #[test]
    fn input_mapping_creates_objects_on_the_way() {
        let s = spec(
            &[("/customer/id", "/customer"), ("/items/-", "/sku")],
            &[],
            Some(json!({"number": "0586", "items": []})),
        );
        let body = try_body(&s, &json!({"customer": 42, "sku": "x"}));
        assert_eq!(
            body,
            Ok(json!({"number": "0586", "customer": {"id": 42}, "items": ["x"]}))
        );
    }

    #[test]
    fn missing_source_names_the_pointer() {
        let s = spec(&[("/customerId", "/customer")], &[], None);
        let err = try_body(&s, &json!({})).err().unwrap_or_default();
        assert!(err.contains("/customer"), "{err}");
    }

    #[test]
    fn output_mapping_copies_and_notes_missing() {
        let s = spec(
            &[],
            &[("/booking", "/participantLink/uri"), ("/x", "/nope")],
            None,
        );
        let mut state = json!({"customer": 42});
        let notes = apply_output(
            &s,
            &json!({"participantLink": {"uri": "http://p/r/1"}}),
            &mut state,
        );
        assert_eq!(state, json!({"customer": 42, "booking": "http://p/r/1"}));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("/nope"));
    }

    /// The examples of RFC 7396, appendix A.
    #[test]
    fn merge_patch_follows_rfc_7396() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut got = target.clone();
            merge_patch(&mut got, &patch);
            assert_eq!(got, want, "{target} + {patch}");
        }
    }

    #[test]
    fn nothing_deeper_than_the_limit_is_built() {
        let deep_target = "/a".repeat(MAX_BUILT_DEPTH + 1);
        let mut state = json!({"kept": 1});
        assert!(pointer_set(&mut state, &deep_target, json!("x")).is_err());
        assert_eq!(state, json!({"kept": 1}), "nothing written");
        // The value's own depth counts too.
        let mut deep_value = json!(1);
        for _ in 0..MAX_BUILT_DEPTH {
            deep_value = json!([deep_value]);
        }
        assert!(pointer_set(&mut state, "/b", deep_value.clone()).is_err());
        let s = spec(&[], &[("/b", "/v"), ("/c", "/w")], None);
        let answer = json!({"v": deep_value, "w": 2});
        let notes = apply_output(&s, &answer, &mut state);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("/b") && notes[0].contains("64"),
            "{notes:?}"
        );
        assert_eq!(state, json!({"kept": 1, "c": 2}));
        assert_eq!(
            output_writes(&s, &answer),
            vec![("/c".to_string(), json!(2))]
        );
        // Up to the limit is fine.
        let at_limit = "/a".repeat(MAX_BUILT_DEPTH);
        assert!(pointer_set(&mut state, &at_limit, json!("x")).is_ok());
        assert_eq!(depth(&state), MAX_BUILT_DEPTH);
    }

    /// Output mappings keep the shared state within its limits: 256 KiB, an object.
    #[test]
    fn output_mappings_keep_the_shared_state_within_its_limits() {
        let s = spec(
            &[],
            &[("/big", "/big"), ("/small", "/small"), ("", "/small")],
            None,
        );
        let answer = json!({"big": "x".repeat(300 * 1024), "small": 1});
        let mut state = json!({"kept": true});
        let notes = apply_output(&s, &answer, &mut state);
        assert_eq!(state, json!({"kept": true, "small": 1}));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("256 KiB") && notes[1].contains("object"),
            "{notes:?}"
        );
    }

    #[test]
    fn writing_into_a_scalar_is_an_error() {
        let mut v = json!({"a": 1});
        assert!(pointer_set(&mut v, "/a/b", json!(2)).is_err());
        let mut arr = json!([1]);
        assert!(pointer_set(&mut arr, "/5", json!(2)).is_err());
    }
}
