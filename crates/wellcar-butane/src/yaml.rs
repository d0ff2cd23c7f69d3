//! A YAML document read into a small tree whose every node and key knows its `line:column`.
//!
//! Contract: exactly one document; mapping keys are scalars and unique; anchors and aliases are
//! resolved by copying. Scalars keep their text and whether they were plain (unquoted), because
//! Butane decides `0644` (an integer, octal) versus `"0644"` (a string) by the schema field's
//! type, which the translator knows and this module does not.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the YAML text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// A YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it is.
    pub kind: Kind,
}

/// The node's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A scalar: its text and whether it was written without quotes or block style.
    Scalar {
        /// The scalar's text.
        text: String,
        /// Unquoted (so `true`, `~`, `0644` carry their YAML meaning).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with scalar keys, in document order.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key text.
    pub name: String,
    /// Where the key starts.
    pub pos: Pos,
}

impl Node {
    /// True for a plain `null`, `~`, `Null`, `NULL` or empty scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The value under `key` if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The scalar text, if a non-null scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// The parser's message.
    pub message: String,
}

/// Parses one YAML document.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        pos: (*e.marker()).into(),
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    match builder.documents.len() {
        0 => Ok(Node {
            pos: Pos { line: 1, column: 1 },
            kind: Kind::Map(Vec::new()),
        }),
        1 => Ok(builder.documents.remove(0)),
        _ => Err(SyntaxError {
            pos: Pos { line: 1, column: 1 },
            message: "more than one YAML document (only one is allowed)".to_string(),
        }),
    }
}

enum Open {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<(Key, Node)>, Option<Key>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    documents: Vec<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                pos,
                message: message.into(),
            });
        }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, pending)) => match pending.take() {
                None => match node.kind {
                    Kind::Scalar { text, .. } => {
                        if entries.iter().any(|(k, _)| k.name == text) {
                            let pos = node.pos;
                            self.fail(pos, format!("duplicate key {text:?}"));
                        } else if let Some(Open::Map(_, _, _, pending)) = self.stack.last_mut() {
                            *pending = Some(Key {
                                name: text,
                                pos: node.pos,
                            });
                        }
                    }
                    _ => self.fail(node.pos, "mapping keys must be scalars"),
                },
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    pos,
                    kind: Kind::Scalar {
                        text,
                        plain: style == TScalarStyle::Plain,
                    },
                };
                self.finish(node, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(pos, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(pos, anchor, Vec::new(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Seq(pos, anchor, items)) => self.finish(
                    Node {
                        pos,
                        kind: Kind::Seq(items),
                    },
                    anchor,
                ),
                Some(Open::Map(pos, anchor, entries, _)) => self.finish(
                    Node {
                        pos,
                        kind: Kind::Map(entries),
                    },
                    anchor,
                ),
                None => self.fail(pos, "unbalanced collection end"),
            },
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.finish(node, 0),
                None => self.fail(pos, "alias to an unknown anchor"),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_line_and_column() {
        let doc = parse("variant: flatcar\nstorage:\n  files:\n    - path: /a\n").unwrap();
        let storage = doc.get("storage").unwrap();
        let files = storage.get("files").unwrap();
        let Kind::Seq(items) = &files.kind else {
            panic!("{files:?}")
        };
        let Kind::Map(entries) = &items[0].kind else {
            panic!()
        };
        assert_eq!(entries[0].0.pos, Pos { line: 4, column: 7 });
        assert_eq!(entries[0].1.as_str(), Some("/a"));
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_carry_positions() {
        let err = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err}");
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 1 });
        assert!(err.message.contains("duplicate key"), "{err}");
    }

    #[test]
    fn quoted_scalars_are_not_plain_and_aliases_copy() {
        let doc = parse("a: &x '0644'\nb: *x\nc: 0644\n").unwrap();
        assert_eq!(
            doc.get("b").unwrap().kind,
            Kind::Scalar {
                text: "0644".into(),
                plain: false
            }
        );
        assert!(matches!(
            doc.get("c").unwrap().kind,
            Kind::Scalar { plain: true, .. }
        ));
    }
}
