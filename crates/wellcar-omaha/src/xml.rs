//! A minimal element tree over quick-xml: elements and attributes only (Omaha carries no text
//! content we need). Parsing fails on anything that is not well-formed, with the byte offset.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Why an Omaha document could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The body is empty or only whitespace.
    #[error("empty document")]
    Empty,
    /// The body is not UTF-8.
    #[error("document is not utf-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The body is not well-formed XML.
    #[error("malformed xml at byte {offset}: {message}")]
    Malformed {
        /// Byte offset where the parser stopped.
        offset: u64,
        /// The parser's description.
        message: String,
    },
    /// The root element is not the expected one.
    #[error("root element is <{found}>, expected <{expected}>")]
    WrongRoot {
        /// What the document has.
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// `protocol` is missing or not `3.0`.
    #[error("unsupported omaha protocol {found:?}, expected \"3.0\"")]
    UnsupportedProtocol {
        /// The attribute as sent (empty if missing).
        found: String,
    },
    /// A required attribute is missing.
    #[error("<{element}> is missing attribute {attribute:?}")]
    MissingAttribute {
        /// Element name.
        element: &'static str,
        /// Attribute name.
        attribute: &'static str,
    },
    /// An attribute has a value that cannot be used.
    #[error("<{element}> attribute {attribute:?} has invalid value {value:?}")]
    InvalidAttribute {
        /// Element name.
        element: &'static str,
        /// Attribute name.
        attribute: &'static str,
        /// The value as sent.
        value: String,
    },
}

/// One element: name, attributes in document order, child elements.
#[derive(Debug, Clone, Default)]
pub(crate) struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }
}

fn malformed(reader: &Reader<&[u8]>, message: impl ToString) -> ParseError {
    ParseError::Malformed {
        offset: reader.error_position(),
        message: message.to_string(),
    }
}

fn element_from(reader: &Reader<&[u8]>, start: &BytesStart<'_>) -> Result<Element, ParseError> {
    let name = std::str::from_utf8(start.name().as_ref())
        .map_err(|e| malformed(reader, e))?
        .to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.:".contains(c))
    {
        return Err(ParseError::Malformed {
            offset: reader.buffer_position(),
            message: format!("invalid element name {name:?}"),
        });
    }
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| malformed(reader, e))?;
        let key = std::str::from_utf8(attr.key.as_ref())
            .map_err(|e| malformed(reader, e))?
            .to_owned();
        let value = attr
            .unescape_value()
            .map_err(|e| malformed(reader, e))?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

/// Parses a whole document into its root element.
pub(crate) fn parse_document(body: &[u8]) -> Result<Element, ParseError> {
    let text = std::str::from_utf8(body).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let event = reader.read_event().map_err(|e| malformed(&reader, e))?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(malformed(&reader, "content after the root element"));
                }
                stack.push(element_from(&reader, &start)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(malformed(&reader, "content after the root element"));
                }
                let el = element_from(&reader, &start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let done = stack
                    .pop()
                    .ok_or_else(|| malformed(&reader, "unexpected end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(t)
                if stack.is_empty() && !t.as_ref().iter().all(u8::is_ascii_whitespace) =>
            {
                return Err(malformed(&reader, "text outside the root element"));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(ParseError::Malformed {
            offset: reader.buffer_position(),
            message: format!("unclosed element <{}>", open.name),
        });
    }
    root.ok_or(ParseError::Empty)
}

/// Escapes a string for use inside a double-quoted attribute.
pub(crate) fn escape_attr(value: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(value)
}

/// Appends ` name="value"` to `out`.
pub(crate) fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    out.push_str(&escape_attr(value));
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_keeps_attributes_and_nesting() {
        let root = parse_document(b"  <a x=\"1&amp;2\"><b/><c y='z'></c></a>\n").expect("parses");
        assert_eq!(root.name, "a");
        assert_eq!(root.attr("x"), Some("1&2"));
        assert_eq!(root.children.len(), 2);
        assert_eq!(root.child("c").and_then(|c| c.attr("y")), Some("z"));
    }

    #[test]
    fn broken_documents_are_rejected_with_reason() {
        assert_eq!(parse_document(b"  \n").unwrap_err(), ParseError::Empty);
        assert!(matches!(
            parse_document(b"<a><b></a>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_document(b"<a><b/>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_document(b"invalid xml>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_document(b"<a/><b/>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse_document(&[0x3c, 0xff, 0x3e]),
            Err(ParseError::NotUtf8 { offset: 1 })
        ));
    }
}
