//! A small YAML emitter for the files devctl writes (compose, Prometheus). It only emits, in
//! block style, with every string double-quoted (JSON escapes are valid YAML), so no input can
//! change the document's structure. Maps keep their insertion order for readable output.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Yaml {
    pub fn map() -> Yaml {
        Yaml::Map(Vec::new())
    }

    /// Adds a key (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Yaml>) -> Yaml {
        if let Yaml::Map(entries) = &mut self {
            entries.push((key.to_string(), value.into()));
        }
        self
    }

    pub fn insert(&mut self, key: &str, value: impl Into<Yaml>) {
        if let Yaml::Map(entries) = self {
            entries.push((key.to_string(), value.into()));
        }
    }

    pub fn strs<I, S>(items: I) -> Yaml
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Yaml::Seq(items.into_iter().map(|s| Yaml::Str(s.into())).collect())
    }

    /// A JSON value as YAML (what serde gives for typed objects such as Kubernetes'); nulls
    /// are left out, numbers that are not integers are kept as their text.
    pub fn from_json(value: &serde_json::Value) -> Yaml {
        use serde_json::Value;
        match value {
            Value::Object(map) => Yaml::Map(
                map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), Yaml::from_json(v)))
                    .collect(),
            ),
            Value::Array(items) => Yaml::Seq(items.iter().map(Yaml::from_json).collect()),
            Value::String(s) => Yaml::Str(s.clone()),
            Value::Bool(b) => Yaml::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Int(i),
                None => Yaml::Str(n.to_string()),
            },
            Value::Null => Yaml::Str(String::new()),
        }
    }

    fn is_empty_collection(&self) -> bool {
        matches!(self, Yaml::Map(m) if m.is_empty()) || matches!(self, Yaml::Seq(s) if s.is_empty())
    }

    /// The document as text, ending with a newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self {
            Yaml::Map(_) | Yaml::Seq(_) if !self.is_empty_collection() => {
                self.block(&mut out, 0);
            }
            _ => {
                out.push_str(&self.scalar());
                out.push('\n');
            }
        }
        out
    }

    fn scalar(&self) -> String {
        match self {
            Yaml::Str(s) => quote(s),
            Yaml::Int(i) => i.to_string(),
            Yaml::Bool(b) => b.to_string(),
            Yaml::Map(_) => "{}".into(),
            Yaml::Seq(_) => "[]".into(),
        }
    }

    fn is_block(&self) -> bool {
        matches!(self, Yaml::Map(_) | Yaml::Seq(_)) && !self.is_empty_collection()
    }

    fn block(&self, out: &mut String, indent: usize) {
        let pad = " ".repeat(indent);
        match self {
            Yaml::Map(entries) => {
                for (key, value) in entries {
                    let _ = write!(out, "{pad}{}:", key_text(key));
                    if value.is_block() {
                        out.push('\n');
                        let child = if matches!(value, Yaml::Seq(_)) {
                            indent
                        } else {
                            indent + 2
                        };
                        value.block(out, child);
                    } else {
                        let _ = writeln!(out, " {}", value.scalar());
                    }
                }
            }
            Yaml::Seq(items) => {
                for item in items {
                    if item.is_block() {
                        let mut inner = String::new();
                        item.block(&mut inner, indent + 2);
                        // The first line's indentation becomes "- ".
                        let trimmed = inner.get(indent + 2..).unwrap_or("");
                        let _ = write!(out, "{pad}- {trimmed}");
                    } else {
                        let _ = writeln!(out, "{pad}- {}", item.scalar());
                    }
                }
            }
            scalar => {
                let _ = writeln!(out, "{pad}{}", scalar.scalar());
            }
        }
    }
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        && !key.starts_with(['-', '.']);
    if plain {
        key.to_string()
    } else {
        quote(key)
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl From<&str> for Yaml {
    fn from(s: &str) -> Yaml {
        Yaml::Str(s.to_string())
    }
}
impl From<String> for Yaml {
    fn from(s: String) -> Yaml {
        Yaml::Str(s)
    }
}
impl From<&String> for Yaml {
    fn from(s: &String) -> Yaml {
        Yaml::Str(s.clone())
    }
}
impl From<bool> for Yaml {
    fn from(b: bool) -> Yaml {
        Yaml::Bool(b)
    }
}
impl From<i64> for Yaml {
    fn from(i: i64) -> Yaml {
        Yaml::Int(i)
    }
}
impl From<u16> for Yaml {
    fn from(i: u16) -> Yaml {
        Yaml::Int(i64::from(i))
    }
}
impl From<Vec<Yaml>> for Yaml {
    fn from(v: Vec<Yaml>) -> Yaml {
        Yaml::Seq(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_style_with_quoted_strings() {
        let doc = Yaml::map().with("version", "2.4").with(
            "services",
            Yaml::map().with(
                "a",
                Yaml::map()
                    .with("image", "x:1")
                    .with("cap_add", Yaml::strs(["NET_ADMIN"]))
                    .with(
                        "ports",
                        Yaml::Seq(vec![Yaml::map().with("k", 1i64).with("v", true)]),
                    )
                    .with("empty", Yaml::map())
                    .with("tricky", "a: b\n\"c\" #d"),
            ),
        );
        let expected = r#"version: "2.4"
services:
  a:
    image: "x:1"
    cap_add:
    - "NET_ADMIN"
    ports:
    - k: 1
      v: true
    empty: {}
    tricky: "a: b\n\"c\" #d"
"#;
        assert_eq!(doc.render(), expected);
    }

    #[test]
    fn nested_sequences_and_odd_keys() {
        let doc = Yaml::map().with(
            "groups",
            Yaml::Seq(vec![Yaml::map()
                .with("name", "g")
                .with("rules", Yaml::Seq(vec![Yaml::map().with("alert", "A")]))]),
        );
        assert_eq!(
            doc.render(),
            "groups:\n- name: \"g\"\n  rules:\n  - alert: \"A\"\n"
        );
        assert_eq!(key_text("io.x/y"), "io.x/y");
        assert_eq!(key_text("a b"), "\"a b\"");
        assert_eq!(key_text("-x"), "\"-x\"");
    }
}
