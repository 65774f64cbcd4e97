//! A JSON scanner for what the daemon only routes: it checks a message as
//! strictly as `serde_json` does and hands out the places of its values,
//! reading each byte once. serde's readers go over a megabytes-long string
//! (a base64 image) eight bytes at a time, once per layer that reads it
//! (the message, its item, the item's fields); here a string's body is
//! checked a block at a time, and every layer takes the places found by
//! the one scan.

use super::*;

/// Deepest nesting the scanner follows: the most `serde_json` builds, so
/// whatever the scanner takes can later be built into a value. A message
/// nested deeper is refused, not read on a deep stack.
const MAX_DEPTH: u32 = 127;

/// Bytes a string's body is checked by at a time: a block with no quote,
/// backslash or control character is passed over whole.
const BLOCK: usize = 32;

/// Why a text is not JSON (or not read on), and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScanError {
    what: Cow<'static, str>,
    at: Option<usize>,
}

impl ScanError {
    /// A reader's own reason to stop, at no place of the text.
    pub(super) fn new(what: impl Into<Cow<'static, str>>) -> Self {
        ScanError {
            what: what.into(),
            at: None,
        }
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(f, "{} at byte {at}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// A JSON string as it is in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JsonStr<'a> {
    /// With its quotes.
    pub(super) raw: &'a str,
    /// Whether it has escapes (so that its text is not its body).
    pub(super) escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// Its text: borrowed when it has no escapes; `None` when an escape
    /// does not decode (a lone surrogate).
    pub(super) fn text(&self) -> Option<Cow<'a, str>> {
        match self.escaped {
            false => Some(Cow::Borrowed(&self.raw[1..self.raw.len() - 1])),
            true => serde_json::from_str::<String>(self.raw)
                .ok()
                .map(Cow::Owned),
        }
    }
}

/// A value's text, and its string when it is one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scanned<'a> {
    pub(super) raw: &'a str,
    pub(super) string: Option<JsonStr<'a>>,
}

impl<'a> Scanned<'a> {
    /// Its text when it is a string (`None` for any other value, or a
    /// string that does not decode).
    pub(super) fn text(&self) -> Option<Cow<'a, str>> {
        self.string.and_then(|s| s.text())
    }
}

/// A cursor over one JSON text.
pub(super) struct Scan<'a> {
    text: &'a str,
    pos: usize,
    depth: u32,
}

impl<'a> Scan<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Scan {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn error(&self, what: &'static str) -> ScanError {
        ScanError {
            what: Cow::Borrowed(what),
            at: Some(self.pos),
        }
    }

    /// Runs `read` on the value at the cursor and hands back that value's
    /// text with what `read` made of it.
    pub(super) fn record<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, ScanError>,
    ) -> Result<(&'a str, T), ScanError> {
        self.ws();
        let start = self.pos;
        let made = read(self)?;
        Ok((&self.text[start..self.pos], made))
    }

    fn ws(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    pub(super) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8, what: &'static str) -> Result<(), ScanError> {
        match self.peek() {
            Some(b) if b == byte => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(self.error(what)),
            None => Err(self.error("unexpected end")),
        }
    }

    /// Nothing but whitespace is left.
    pub(super) fn end(&mut self) -> Result<(), ScanError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    /// Reads any value.
    pub(super) fn value(&mut self) -> Result<Scanned<'a>, ScanError> {
        let start = match self.peek() {
            Some(_) => self.pos,
            None => return Err(self.error("unexpected end")),
        };
        let string = match self.text.as_bytes()[start] {
            b'"' => Some(self.string()?),
            b'{' => {
                self.nested(|scan| scan.object(|scan, _| scan.value().map(drop)))?;
                None
            }
            b'[' => {
                self.nested(|scan| scan.array(|scan| scan.value().map(drop)))?;
                None
            }
            b't' => self.literal("true").map(|_| None)?,
            b'f' => self.literal("false").map(|_| None)?,
            b'n' => self.literal("null").map(|_| None)?,
            b'-' | b'0'..=b'9' => self.number().map(|_| None)?,
            _ => return Err(self.error("expected a value")),
        };
        Ok(Scanned {
            raw: &self.text[start..self.pos],
            string,
        })
    }

    fn nested(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        if self.depth == MAX_DEPTH {
            return Err(self.error("nested too deep"));
        }
        self.depth += 1;
        let read = read(self);
        self.depth -= 1;
        read
    }

    /// Reads an object, handing each key to `entry`, which must read its
    /// value.
    pub(super) fn object(
        &mut self,
        mut entry: impl FnMut(&mut Self, JsonStr<'a>) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.eat(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            let key = self.string()?;
            self.eat(b':', "expected `:`")?;
            entry(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(self.error("expected `,` or `}`")),
                None => return Err(self.error("unexpected end")),
            }
        }
    }

    /// Reads an array, `element` reading each of its values.
    pub(super) fn array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.eat(b'[', "expected an array")?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(self.error("expected `,` or `]`")),
                None => return Err(self.error("unexpected end")),
            }
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), ScanError> {
        match self.text[self.pos..].starts_with(word) {
            true => {
                self.pos += word.len();
                Ok(())
            }
            false => Err(self.error("expected a value")),
        }
    }

    fn digits(&mut self) -> usize {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        while bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), ScanError> {
        let bytes = self.text.as_bytes();
        if bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    /// Reads a string (the cursor at its opening quote).
    fn string(&mut self) -> Result<JsonStr<'a>, ScanError> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.pos = plain_run(bytes, self.pos);
            match bytes.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(JsonStr {
                        raw: &self.text[start..self.pos],
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err(self.error("control character in a string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// Checks the escape at the cursor (a backslash) and steps over it.
    fn escape(&mut self) -> Result<(), ScanError> {
        let bytes = self.text.as_bytes();
        match bytes.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
            Some(b'u') => {
                let hex = bytes.get(self.pos + 2..self.pos + 6);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(self.error("invalid \\u escape"));
                }
                self.pos += 6;
            }
            _ => return Err(self.error("invalid escape")),
        }
        Ok(())
    }
}

/// Where the run of string bytes that need no attention (no quote,
/// backslash or control character) from `i` ends.
fn plain_run(bytes: &[u8], mut i: usize) -> usize {
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    // Every byte of a block is tested, without stopping at the first:
    // the test is then one the compiler does for many bytes at once.
    while let Some(block) = bytes.get(i..i + BLOCK) {
        if block.iter().fold(false, |hit, &b| hit | special(b)) {
            break;
        }
        i += BLOCK;
    }
    while bytes.get(i).is_some_and(|&b| !special(b)) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether the scanner takes `text` as one JSON value.
    fn scans(text: &str) -> bool {
        let mut scan = Scan::new(text);
        scan.value().is_ok() && scan.end().is_ok()
    }

    fn serde_takes(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    #[test]
    fn takes_what_serde_json_takes_and_refuses_what_it_refuses() {
        let cases = [
            r#"{"a":[1,-2.5e+3,0,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9"]}"#,
            " [ ] ",
            "{}",
            r#""plain""#,
            "-0",
            "0.5E-2",
            r#"{"a" : { "b" : [ { } ] } }"#,
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "tru",
            "nul",
            r#"{"a":1,}"#,
            "[1,]",
            r#"{"a"}"#,
            r#"{a:1}"#,
            r#"{"a":1 "b":2}"#,
            "\"a\u{1}b\"",
            "\"tab\tin\"",
            r#""\x""#,
            r#""\u12g4""#,
            r#""\u12""#,
            r#""unterminated"#,
            "[1] 2",
            "",
            "   ",
            "\u{feff}{}",
            "{\"é\":\"ü\"}",
            "[1]\n",
            "\u{a0}1",
        ];
        for case in cases {
            assert_eq!(scans(case), serde_takes(case), "{case:?}");
        }
        // Skipping a value never recurses in serde_json, so its depth limit
        // shows only when it builds one.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let builds = |text: &str| serde_json::from_str::<serde_json::Value>(text).is_ok();
        let at_limit = deep(MAX_DEPTH as usize);
        let past_limit = deep(MAX_DEPTH as usize + 1);
        assert!(scans(&at_limit) && builds(&at_limit));
        assert!(!scans(&past_limit) && !builds(&past_limit));
    }

    #[test]
    fn a_long_string_is_read_whole_and_stops_at_its_quote_or_a_control_character() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 3] {
            let body = "A".repeat(len);
            let text = format!(r#"["{body}",1]"#);
            let mut scan = Scan::new(&text);
            let mut strings = Vec::new();
            scan.array(|scan| {
                strings.push(scan.value()?.text());
                Ok(())
            })
            .unwrap();
            assert_eq!(strings, vec![Some(Cow::Borrowed(body.as_str())), None]);
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    continue;
                }
                let mut bad = body.clone().into_bytes();
                bad[at] = b'\n';
                let bad = format!("\"{}\"", String::from_utf8(bad).unwrap());
                assert!(!scans(&bad) && !serde_takes(&bad), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn an_escaped_string_is_decoded_and_a_lone_surrogate_is_not_a_text() {
        let mut scan = Scan::new(r#""a\/b\u00e9""#);
        let v = scan.value().unwrap();
        assert_eq!(v.text().as_deref(), Some("a/bé"));
        assert!(v.string.unwrap().escaped);
        let mut scan = Scan::new(r#""\ud800""#);
        assert_eq!(scan.value().unwrap().text(), None);
    }

    /// JSON texts, valid and not: values with strings of every kind of
    /// character, cut and spliced at random places.
    fn texts() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "[\\PC\u{0}-\u{1f}\"\\\\]{0,40}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(5, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::vec(("[a-zA-Z\"\\\\é]{0,6}", inner), 0..6)
                    .prop_map(|kv| { serde_json::Value::Object(kv.into_iter().collect()) }),
            ]
        });
        (
            value,
            any::<bool>(),
            any::<prop::sample::Index>(),
            "[ -~\t\n]{0,3}",
        )
            .prop_map(|(v, spoil, at, splice)| {
                let text = match v.is_object() {
                    true => serde_json::to_string_pretty(&v).unwrap(),
                    false => v.to_string(),
                };
                if !spoil {
                    return text;
                }
                let mut at = at.index(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                format!("{}{splice}{}", &text[..at], &text[at..])
            })
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_any_text(text in texts()) {
            prop_assert_eq!(scans(&text), serde_takes(&text), "{:?}", text);
        }

        #[test]
        fn a_values_text_is_what_serde_json_reads_of_it(text in texts()) {
            let mut scan = Scan::new(&text);
            if let Ok(v) = scan.value() {
                if scan.end().is_ok() {
                    let ours: serde_json::Value = serde_json::from_str(v.raw).unwrap();
                    let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
                    prop_assert_eq!(&ours, &theirs);
                    if let serde_json::Value::String(s) = &theirs {
                        let text = v.text();
                        prop_assert_eq!(text.as_deref(), Some(s.as_str()));
                    }
                }
            }
        }
    }
}
