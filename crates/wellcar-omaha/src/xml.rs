//! A minimal element tree over quick-xml: elements and attributes only (Omaha carries no text
//! content we need).
//!
//! Contract:
//! - [`parse_document`] fails on anything that is not well-formed, with the byte offset, and on
//!   anything over the bounds in [`crate::limits`]: the body's size, nesting depth, element count,
//!   attributes per element. Duplicate attributes are refused (an XML well-formedness rule).
//! - Parsing is iterative and linear in the body's size: attributes go into a hash map (duplicate
//!   check and lookup without rescanning), and the tree is built with an explicit stack.
//! - An [`Element`] tree is freed iteratively, so dropping one never recurses, however deep.
//! - No entities beyond XML's predefined five and character references are expanded (quick-xml
//!   does not read DTDs), so a body cannot expand into more than itself.

use std::collections::hash_map::{Entry, HashMap};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::limits::{MAX_ATTRIBUTES_PER_ELEMENT, MAX_DEPTH, MAX_ELEMENTS};

/// Why an Omaha document could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The body is empty or only whitespace.
    #[error("empty document")]
    Empty,
    /// The body is larger than documents of its kind may be.
    #[error("omaha {document} is {bytes} bytes, over the {max}-byte limit")]
    TooLarge {
        /// `request` or `response`.
        document: &'static str,
        /// Size of the body.
        bytes: usize,
        /// The limit ([`crate::MAX_REQUEST_BYTES`] or [`crate::MAX_RESPONSE_BYTES`]).
        max: usize,
    },
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
    /// An element is nested deeper than [`crate::MAX_DEPTH`].
    #[error("<{element}> at byte {offset} is nested deeper than the depth limit of {max}")]
    TooDeep {
        /// Name of the first element past the limit.
        element: String,
        /// Byte offset of its start tag.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// The document has more than [`crate::MAX_ELEMENTS`] elements.
    #[error("<{element}> at byte {offset} is over the limit of {max} elements per document")]
    TooManyElements {
        /// Name of the first element past the limit.
        element: String,
        /// Byte offset of its start tag.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// One element has more than [`crate::MAX_ATTRIBUTES_PER_ELEMENT`] attributes.
    #[error("<{element}> at byte {offset} has more than {max} attributes, the per-element limit")]
    TooManyAttributes {
        /// Element name.
        element: String,
        /// Byte offset of its start tag.
        offset: u64,
        /// The limit.
        max: usize,
    },
    /// One element has the same attribute twice.
    #[error("<{element}> at byte {offset} has attribute {attribute:?} more than once")]
    DuplicateAttribute {
        /// Element name.
        element: String,
        /// The repeated attribute.
        attribute: String,
        /// Byte offset of the element's start tag.
        offset: u64,
    },
    /// A request has more than [`crate::MAX_APPS_PER_REQUEST`] `<app>` elements.
    #[error("request has {count} <app> elements, over the limit of {max} per request")]
    TooManyApps {
        /// How many the request has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An `<app>` of a request has more than [`crate::MAX_EVENTS_PER_APP`] `<event>` elements.
    #[error("<app> number {app} of the request has {count} <event> elements, over the limit of {max} per app")]
    TooManyEvents {
        /// Position of the app in the request, from 1.
        app: usize,
        /// How many events it has.
        count: usize,
        /// The limit.
        max: usize,
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

/// One element: name, attributes, child elements in document order.
#[derive(Debug, Default)]
pub(crate) struct Element {
    pub name: String,
    attrs: HashMap<String, String>,
    pub children: Vec<Element>,
}

impl Drop for Element {
    /// Frees the subtree without recursion: every descendant is moved into one flat list and
    /// dropped childless, so the stack depth does not grow with the tree's depth.
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.children);
        while let Some(mut element) = pending.pop() {
            pending.append(&mut element.children);
        }
    }
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Takes the name out (an `Element` cannot be moved out of, since it implements `Drop`).
    pub fn take_name(&mut self) -> String {
        std::mem::take(&mut self.name)
    }
}

fn malformed(reader: &Reader<&[u8]>, message: impl ToString) -> ParseError {
    ParseError::Malformed {
        offset: reader.error_position(),
        message: message.to_string(),
    }
}

/// Reads one start tag (`<name attr="…">` or `<name …/>`) that begins at byte `offset`.
fn element_from(
    reader: &Reader<&[u8]>,
    start: &BytesStart<'_>,
    offset: u64,
) -> Result<Element, ParseError> {
    let name = std::str::from_utf8(start.name().as_ref())
        .map_err(|e| malformed(reader, e))?
        .to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.:".contains(c))
    {
        return Err(ParseError::Malformed {
            offset,
            message: format!("invalid element name {name:?}"),
        });
    }
    let mut attrs = HashMap::new();
    // quick-xml's own duplicate check compares each attribute with every earlier one (quadratic
    // in the attribute count); the hash map below does the same check in linear time.
    for attr in start.attributes().with_checks(false) {
        let attr = attr.map_err(|e| malformed(reader, e))?;
        if attrs.len() == MAX_ATTRIBUTES_PER_ELEMENT {
            return Err(ParseError::TooManyAttributes {
                element: name,
                offset,
                max: MAX_ATTRIBUTES_PER_ELEMENT,
            });
        }
        let key = std::str::from_utf8(attr.key.as_ref())
            .map_err(|e| malformed(reader, e))?
            .to_owned();
        match attrs.entry(key) {
            Entry::Occupied(repeated) => {
                return Err(ParseError::DuplicateAttribute {
                    element: name,
                    attribute: repeated.key().clone(),
                    offset,
                })
            }
            Entry::Vacant(slot) => {
                let value = attr
                    .unescape_value()
                    .map_err(|e| malformed(reader, e))?
                    .into_owned();
                slot.insert(value);
            }
        }
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

/// Parses a whole `document` (`"request"` or `"response"`, for errors) of at most `max_bytes`
/// into its root element, within the bounds of [`crate::limits`].
pub(crate) fn parse_document(
    body: &[u8],
    document: &'static str,
    max_bytes: usize,
) -> Result<Element, ParseError> {
    if body.len() > max_bytes {
        return Err(ParseError::TooLarge {
            document,
            bytes: body.len(),
            max: max_bytes,
        });
    }
    let text = std::str::from_utf8(body).map_err(|e| ParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    // The open elements, innermost last; never longer than MAX_DEPTH.
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| malformed(&reader, e))?;
        let (start, empty) = match event {
            Event::Start(start) => (start, false),
            Event::Empty(start) => (start, true),
            Event::End(_) => {
                let done = stack
                    .pop()
                    .ok_or_else(|| malformed(&reader, "unexpected end tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
                continue;
            }
            Event::Text(t)
                if stack.is_empty() && !t.as_ref().iter().all(u8::is_ascii_whitespace) =>
            {
                return Err(malformed(&reader, "text outside the root element"));
            }
            Event::Eof => break,
            _ => continue,
        };
        if root.is_some() {
            return Err(malformed(&reader, "content after the root element"));
        }
        // The tag spans `<`, its content, then `>` or `/>`, and ends at the reader's position.
        let tag_len = start.len() + if empty { 3 } else { 2 };
        let offset = reader.buffer_position().saturating_sub(tag_len as u64);
        let limit_name = || String::from_utf8_lossy(start.name().as_ref()).into_owned();
        elements += 1;
        if elements > MAX_ELEMENTS {
            return Err(ParseError::TooManyElements {
                element: limit_name(),
                offset,
                max: MAX_ELEMENTS,
            });
        }
        if stack.len() == MAX_DEPTH {
            return Err(ParseError::TooDeep {
                element: limit_name(),
                offset,
                max: MAX_DEPTH,
            });
        }
        let element = element_from(&reader, &start, offset)?;
        if !empty {
            stack.push(element);
            continue;
        }
        match stack.last_mut() {
            Some(parent) => parent.children.push(element),
            None => root = Some(element),
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
pub(crate) mod tests {
    use super::*;
    use crate::limits::MAX_RESPONSE_BYTES;

    fn parse(body: &[u8]) -> Result<Element, ParseError> {
        parse_document(body, "response", MAX_RESPONSE_BYTES)
    }

    /// Runs `f` on a thread with a 256 KiB stack, as small as a busy async worker may have left;
    /// a stack overflow there aborts the whole test process, which fails the test run.
    pub(crate) fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .name("small-stack".into())
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawning a thread")
            .join()
            .expect("the small-stack thread panicked")
    }

    #[test]
    fn tree_keeps_attributes_and_nesting() {
        let root = parse(b"  <a x=\"1&amp;2\"><b/><c y='z'></c></a>\n").expect("parses");
        assert_eq!(root.name, "a");
        assert_eq!(root.attr("x"), Some("1&2"));
        assert_eq!(root.children.len(), 2);
        assert_eq!(root.child("c").and_then(|c| c.attr("y")), Some("z"));
    }

    #[test]
    fn broken_documents_are_rejected_with_reason() {
        assert_eq!(parse(b"  \n").unwrap_err(), ParseError::Empty);
        assert!(matches!(
            parse(b"<a><b></a>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse(b"<a><b/>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse(b"invalid xml>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse(b"<a/><b/>"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse(&[0x3c, 0xff, 0x3e]),
            Err(ParseError::NotUtf8 { offset: 1 })
        ));
    }

    /// Finding "the agent can be crashed by its server": a document nested 200,000 deep (the
    /// attack was 149k) is refused at the depth limit, naming it, and parsing it needs no more
    /// than a small stack. At 5098ded the tree was built and then freed recursively, which
    /// overflowed the stack and aborted.
    #[test]
    fn nesting_past_the_depth_limit_is_refused_on_a_small_stack() {
        let depth = 200_000;
        let body = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
        let err = on_small_stack(move || {
            parse_document(body.as_bytes(), "response", usize::MAX).unwrap_err()
        });
        let offset = 3 * MAX_DEPTH as u64;
        assert_eq!(
            err,
            ParseError::TooDeep {
                element: "a".into(),
                offset,
                max: MAX_DEPTH
            }
        );
        assert!(
            err.to_string().contains(&format!(
                "at byte {offset} is nested deeper than the depth limit of 32"
            )),
            "{err}"
        );
        // Exactly at the limit is accepted (self-closing innermost element).
        let at_limit = format!(
            "{}<a/>{}",
            "<a>".repeat(MAX_DEPTH - 1),
            "</a>".repeat(MAX_DEPTH - 1)
        );
        assert!(parse(at_limit.as_bytes()).is_ok());
    }

    /// Finding "the agent can be crashed by its server": a tree far deeper than any parse may
    /// build (built by hand here) is freed without recursion, on a small stack.
    #[test]
    fn a_deep_tree_is_freed_without_recursion() {
        let freed_depth = on_small_stack(|| {
            let mut tree = Element::default();
            for _ in 0..1_000_000 {
                tree = Element {
                    name: "a".into(),
                    attrs: Default::default(),
                    children: vec![tree],
                };
            }
            let mut depth = 0;
            let mut at = &tree;
            while let Some(child) = at.children.first() {
                depth += 1;
                at = child;
            }
            drop(tree);
            depth
        });
        assert_eq!(freed_depth, 1_000_000);
    }

    /// Finding "CPU amplification": 9,800 attributes on one element (the attack) are refused at
    /// the per-element limit, naming the element, its offset and the limit. At 5098ded they were
    /// accepted after a duplicate check quadratic in the attribute count.
    #[test]
    fn attributes_past_the_per_element_limit_are_refused() {
        let attrs: String = (0..9_800).map(|i| format!(" a{i}=\"\"")).collect();
        let body = format!("<response><app{attrs}/></response>");
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ParseError::TooManyAttributes {
                element: "app".into(),
                offset: 10,
                max: MAX_ATTRIBUTES_PER_ELEMENT
            }
        );
        assert!(
            err.to_string()
                .contains("<app> at byte 10 has more than 64 attributes"),
            "{err}"
        );
        // Exactly at the limit is accepted, and every attribute can be looked up.
        let attrs: String = (0..MAX_ATTRIBUTES_PER_ELEMENT)
            .map(|i| format!(" a{i}=\"{i}\""))
            .collect();
        let root = parse(format!("<response{attrs}/>").as_bytes()).unwrap();
        for i in 0..MAX_ATTRIBUTES_PER_ELEMENT {
            assert_eq!(root.attr(&format!("a{i}")), Some(i.to_string().as_str()));
        }
    }

    /// Finding "CPU amplification": duplicate attributes are still refused now that the check is
    /// a hash-map lookup instead of quick-xml's quadratic scan, naming element and attribute.
    #[test]
    fn duplicate_attributes_are_refused() {
        let err = parse(b"<response><app a=\"1\" b=\"2\" a='3'/></response>").unwrap_err();
        assert_eq!(
            err,
            ParseError::DuplicateAttribute {
                element: "app".into(),
                attribute: "a".into(),
                offset: 10
            }
        );
        assert!(
            err.to_string()
                .contains("<app> at byte 10 has attribute \"a\" more than once"),
            "{err}"
        );
    }

    /// Parsing is bounded in element count and body size, naming the limit.
    #[test]
    fn element_count_and_size_limits_are_enforced() {
        let body = format!("<r>{}</r>", "<e/>".repeat(MAX_ELEMENTS));
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ParseError::TooManyElements {
                element: "e".into(),
                offset: 3 + 4 * (MAX_ELEMENTS as u64 - 1),
                max: MAX_ELEMENTS
            }
        );
        let body = format!("<r>{}</r>", "<e/>".repeat(MAX_ELEMENTS - 1));
        assert_eq!(
            parse(body.as_bytes()).unwrap().children.len(),
            MAX_ELEMENTS - 1
        );

        let err = parse_document(b"<r/>  ", "request", 5).unwrap_err();
        assert_eq!(
            err,
            ParseError::TooLarge {
                document: "request",
                bytes: 6,
                max: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "omaha request is 6 bytes, over the 5-byte limit"
        );
    }

    /// Offsets in limit errors point at the `<` of the offending start tag, for both kinds of tag.
    #[test]
    fn limit_errors_point_at_the_start_tag() {
        let dup = parse(b"<r>\n  <bb x='1' x='2'></bb></r>").unwrap_err();
        assert!(
            matches!(dup, ParseError::DuplicateAttribute { offset: 6, .. }),
            "{dup:?}"
        );
        let dup = parse(b"<r>\n  <bb x='1' x='2' /></r>").unwrap_err();
        assert!(
            matches!(dup, ParseError::DuplicateAttribute { offset: 6, .. }),
            "{dup:?}"
        );
    }
}
