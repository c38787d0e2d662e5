//! `.env` files read as python-dotenv 1.2 reads them (the Python miner's parser, through
//! pydantic-settings' `dotenv_values`), so that one file means the same to both miners.
//!
//! The grammar is python-dotenv's `parser.py`, statement by statement: optional `export `, a bare
//! or `'single-quoted'` key, `=`, then a `'single'` or `"double"`-quoted value (over several lines
//! if it runs on; a backslash always takes the next character with it, so `"x\\"` ends at its
//! second quote) or a bare value cut at the first `#` after whitespace, an optional comment, and
//! the end of the line. `KEY= # note` is empty; a bare `KEY` has no value (`None`), which unsets
//! the key. Anything else is an unreadable statement: skipped to the end of its line, as
//! python-dotenv skips it, and reported by the line python-dotenv names (where the whitespace
//! before it began), never by its text, which may be a secret.
//!
//! "Whitespace" is Python's `\s` (and `str.rstrip`'s): Rust's `char::is_whitespace` plus the
//! four information separators U+001C..U+001F, which Python counts and Rust does not. A file is
//! read as Python's `open()` reads it (`\r\n` and `\r` become `\n`; see [`parse`]);
//! [`parse_stream`] is the grammar on text as given. `tests/dotenv.rs` compares both with
//! python-dotenv itself on written and generated files.

use std::collections::HashMap;

/// What one file holds, in file order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DotEnv {
    /// `KEY=value` bindings; a bare `KEY` (no `=`) is `None`: it unsets the key.
    pub bindings: Vec<(String, Option<String>)>,
    /// 1-based line numbers of the statements that could not be read, as python-dotenv's warning
    /// ("could not parse statement starting at line N") numbers them.
    pub unreadable: Vec<usize>,
}

/// Parses the text of a file as `dotenv_values(path)` reads it: Python's text mode turns `\r\n`
/// and a lone `\r` into `\n` before the parser sees them.
pub fn parse(text: &str) -> DotEnv {
    parse_stream(&universal_newlines(text))
}

/// Parses `text` as python-dotenv's `parse_stream` reads a stream, without expanding `${...}`
/// (see [`DotEnv::values`]). A leading byte-order mark is dropped, as there.
pub fn parse_stream(text: &str) -> DotEnv {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader { chars: text.chars().collect(), pos: 0, line: 1 };
    let mut out = DotEnv::default();
    while !reader.at_end() {
        let mark = reader.line;
        match reader.statement() {
            Ok(Some(binding)) => out.bindings.push(binding),
            Ok(None) => {}
            Err(Unreadable) => {
                // From where reading stopped, not from the statement's start: python-dotenv
                // resumes there too.
                reader.rest_of_line();
                out.unreadable.push(mark);
            }
        }
    }
    out
}

/// Python's universal newlines: `\r\n` and `\r` read as `\n`.
fn universal_newlines(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Python's `\s` on `str`: Unicode whitespace and also U+001C..U+001F.
fn space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Whitespace that does not end a line (the grammar's `[^\S\r\n]`).
fn blank(c: char) -> bool {
    space(c) && c != '\r' && c != '\n'
}

impl DotEnv {
    /// What `dotenv_values()` returns with `env` as the process environment: each key once, in
    /// the order first bound, with its last value; `${NAME}` and `${NAME:-default}` expanded from
    /// the bindings above over `env` (its `override=True`). A name bound above without a value
    /// expands to `""`, its default notwithstanding, as there.
    pub fn values(&self, env: impl Fn(&str) -> Option<String>) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (key, value) in &self.bindings {
            let resolved = value.as_deref().map(|v| {
                expand_value(v, |name| match index.get(name) {
                    Some(&i) => Some(out[i].1.clone().unwrap_or_default()),
                    None => env(name),
                })
            });
            match index.get(key.as_str()) {
                Some(&i) => out[i].1 = resolved,
                None => {
                    index.insert(key, out.len());
                    out.push((key.clone(), resolved));
                }
            }
        }
        out
    }
}

/// `${name}` and `${name:-default}` (python-dotenv's `_posix_variable`); `lookup` is `None` for a
/// name that is not bound at all, which then takes its default.
fn expand_value(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if let Some((name, default, end)) = variable_at(&chars, i) {
            out.push_str(&lookup(&name).or(default).unwrap_or_default());
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// `${name}` or `${name:-default}` starting at `i`: the name, the default and where it ends.
fn variable_at(chars: &[char], i: usize) -> Option<(String, Option<String>, usize)> {
    if chars.get(i) != Some(&'$') || chars.get(i + 1) != Some(&'{') {
        return None;
    }
    let start = i + 2;
    let mut j = start;
    while j < chars.len() && chars[j] != '}' && chars[j] != ':' {
        j += 1;
    }
    let name: String = chars[start..j].iter().collect();
    let mut default = None;
    if chars.get(j) == Some(&':') {
        if chars.get(j + 1) != Some(&'-') {
            return None;
        }
        let start = j + 2;
        j = start;
        while j < chars.len() && chars[j] != '}' {
            j += 1;
        }
        default = Some(chars[start..j].iter().collect());
    }
    (chars.get(j) == Some(&'}')).then(|| (name, default, j + 1))
}

/// A statement that does not follow the grammar (python-dotenv's `parser.Error`).
struct Unreadable;

/// The text and where reading is: python-dotenv's `Reader` and `Position`.
struct Reader {
    chars: Vec<char>,
    pos: usize,
    /// The line `pos` is on. python-dotenv counts `\r\n`, `\n` and `\r` in each piece it reads,
    /// so a `\r\n` split between two pieces (after an unreadable statement) counts twice; so here.
    line: usize,
}

impl Reader {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    /// How many characters from `pos` on `keep` accepts.
    fn count(&self, keep: impl Fn(char) -> bool) -> usize {
        self.chars[self.pos..].iter().take_while(|c| keep(**c)).count()
    }

    /// Reads `n` characters as one piece, counting its line ends.
    fn take(&mut self, n: usize) -> String {
        let piece = &self.chars[self.pos..self.pos + n];
        for (i, c) in piece.iter().enumerate() {
            match c {
                '\n' => self.line += 1,
                '\r' if piece.get(i + 1) != Some(&'\n') => self.line += 1,
                _ => {}
            }
        }
        self.pos += n;
        piece.iter().collect()
    }

    /// One statement: a binding, `None` for a comment or the blank end of the text.
    fn statement(&mut self) -> Result<Option<(String, Option<String>)>, Unreadable> {
        self.take(self.count(space));
        if self.at_end() {
            return Ok(None);
        }
        self.export();
        let key = self.key()?;
        self.take(self.count(blank));
        let value = if self.peek() == Some('=') {
            self.take(1);
            let spaced = !self.take(self.count(blank)).is_empty();
            if spaced && self.peek() == Some('#') {
                // `KEY= # note`: the `#` after whitespace starts a comment, not the value.
                Some(String::new())
            } else {
                Some(self.value()?)
            }
        } else {
            None
        };
        self.comment();
        self.end_of_line()?;
        Ok(key.map(|k| (k, value)))
    }

    /// `export` and at least one blank, before a key.
    fn export(&mut self) {
        let word = ['e', 'x', 'p', 'o', 'r', 't'];
        let end = self.pos + word.len();
        if self.chars.get(self.pos..end) == Some(&word[..]) && self.at(end).is_some_and(blank) {
            let blanks = self.chars[end..].iter().take_while(|c| blank(**c)).count();
            self.take(word.len() + blanks);
        }
    }

    /// `None` at a comment; a `'quoted'` key (at least one character) or a bare one.
    fn key(&mut self) -> Result<Option<String>, Unreadable> {
        match self.peek() {
            Some('#') => Ok(None),
            Some('\'') => {
                let len = self.chars[self.pos + 1..].iter().take_while(|c| **c != '\'').count();
                if len == 0 || self.at(self.pos + 1 + len).is_none() {
                    return Err(Unreadable);
                }
                let quoted = self.take(len + 2);
                Ok(Some(quoted[1..quoted.len() - 1].to_string()))
            }
            _ => match self.count(|c| c != '=' && c != '#' && !space(c)) {
                0 => Err(Unreadable),
                n => Ok(Some(self.take(n))),
            },
        }
    }

    fn value(&mut self) -> Result<String, Unreadable> {
        match self.peek() {
            Some('\'') => Ok(unescape(&self.quoted('\'')?, &['\\', '\''])),
            Some('"') => Ok(unescape(&self.quoted('"')?, &['\\', '\'', '"', 'a', 'b', 'f', 'n', 'r', 't', 'v'])),
            None | Some('\r' | '\n') => Ok(String::new()),
            Some(_) => {
                let part: Vec<char> = self.take(self.count(|c| c != '\r' && c != '\n')).chars().collect();
                // `re.sub(r"\s+#.*", "", part).rstrip()`: cut at the first `#` that follows
                // whitespace (the whitespace goes with the trailing blanks).
                let cut = (1..part.len()).find(|&i| part[i] == '#' && space(part[i - 1]));
                let kept = &part[..cut.unwrap_or(part.len())];
                let end = kept.iter().rposition(|c| !space(*c)).map_or(0, |j| j + 1);
                Ok(kept[..end].iter().collect())
            }
        }
    }

    /// The raw text between `q` quotes: a backslash always takes the next character with it
    /// (so `\\` before the quote does not escape it); no closing quote is unreadable.
    fn quoted(&mut self, q: char) -> Result<String, Unreadable> {
        let mut i = self.pos + 1;
        loop {
            match self.at(i) {
                None => return Err(Unreadable),
                Some('\\') if self.at(i + 1).is_some() => i += 2,
                Some('\\') => return Err(Unreadable),
                Some(c) if c == q => break,
                Some(_) => i += 1,
            }
        }
        let quoted = self.take(i + 1 - self.pos);
        let inner: Vec<char> = quoted.chars().collect();
        Ok(inner[1..inner.len() - 1].iter().collect())
    }

    /// An optional `# comment` (after any blanks) to the end of the line.
    fn comment(&mut self) {
        let blanks = self.count(blank);
        if self.at(self.pos + blanks) == Some('#') {
            let rest = self.chars[self.pos + blanks..].iter().take_while(|c| **c != '\r' && **c != '\n').count();
            self.take(blanks + rest);
        }
    }

    /// Blanks, then a line end or the end of the text.
    fn end_of_line(&mut self) -> Result<(), Unreadable> {
        let blanks = self.count(blank);
        let end = match (self.at(self.pos + blanks), self.at(self.pos + blanks + 1)) {
            (None, _) => 0,
            (Some('\r'), Some('\n')) => 2,
            (Some('\r' | '\n'), _) => 1,
            _ => return Err(Unreadable),
        };
        self.take(blanks + end);
        Ok(())
    }

    /// After an unreadable statement: the rest of the line and one line-end character (python's
    /// `(?:\r|\n|\r\n)?` takes the `\r` of a `\r\n` alone).
    fn rest_of_line(&mut self) {
        let rest = self.count(|c| c != '\r' && c != '\n');
        let end = usize::from(self.at(self.pos + rest).is_some());
        self.take(rest + end);
    }
}

/// Decodes `\x` for each `x` in `escapes` (python-dotenv's `unicode-escape` of those pairs, left
/// to right); any other backslash stays as written.
fn unescape(raw: &str, escapes: &[char]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match chars.peek() {
            Some(&e) if c == '\\' && escapes.contains(&e) => {
                chars.next();
                out.push(match e {
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\u{b}',
                    other => other,
                });
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, Option<String>)> {
        parse(text).values(|_| None)
    }

    fn value(text: &str, key: &str) -> Option<Option<String>> {
        values(text).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn a_quoted_value_ending_in_an_escaped_backslash_ends_at_its_quote() {
        for text in ["A=\"x\\\\\"\nB=after\n", "A='x\\\\'\nB=after\n"] {
            assert_eq!(value(text, "A"), Some(Some("x\\".into())), "{text:?}");
            assert_eq!(value(text, "B"), Some(Some("after".into())), "{text:?}");
            assert!(parse(text).unreadable.is_empty());
        }
    }

    #[test]
    fn whitespace_then_a_hash_after_the_equals_sign_is_an_empty_value() {
        assert_eq!(value("KEY= # comment\n", "KEY"), Some(Some(String::new())));
        assert_eq!(value("KEY=# not a comment\n", "KEY"), Some(Some("# not a comment".into())));
    }

    #[test]
    fn a_bare_key_unsets_it_and_expands_to_nothing_below_default_or_not() {
        let read = values("KEY=1\nKEY\nD=${KEY:-d}\nE=${OTHER:-d}\n");
        assert_eq!(read, vec![("KEY".into(), None), ("D".into(), Some(String::new())), ("E".into(), Some("d".into()))]);
    }

    #[test]
    fn an_unclosed_double_quote_at_the_end_of_the_file_sets_nothing() {
        let read = parse("B=before\nA=\"never closed");
        assert_eq!(read.bindings, vec![("B".into(), Some("before".into()))]);
        assert_eq!(read.unreadable, vec![2]);
    }

    #[test]
    fn an_unreadable_statement_is_numbered_where_the_blank_lines_before_it_begin() {
        assert_eq!(parse("A=1\n\n\nbad line\n").unreadable, vec![2]);
        assert_eq!(parse("bad line\nA=1\n").unreadable, vec![1]);
        // Read as a stream, a CRLF split by the skip counts twice, as in python-dotenv.
        let crlf = "bad line\r\nbad line\r\nbad line\r\n";
        assert_eq!(parse_stream(crlf).unreadable, vec![1, 2, 4]);
        assert_eq!(parse(crlf).unreadable, vec![1, 2, 3], "a file's CRLF is read as one line end");
    }

    #[test]
    fn information_separators_are_whitespace_as_in_python() {
        assert_eq!(value("A=value\u{1c}# comment\n", "A"), Some(Some("value".into())));
        assert_eq!(value("A\u{1f}=x\u{1d}\n", "A"), Some(Some("x".into())));
        assert_eq!(value("A=x\u{0}#y\n", "A"), Some(Some("x\u{0}#y".into())), "NUL is not whitespace");
    }
}
