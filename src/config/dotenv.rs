//! `.env` files read as python-dotenv reads them (what the Python miner's pydantic-settings uses),
//! so that one file means the same to both miners: `export `, single and double quotes (escapes
//! decoded in double quotes, `\\` and `\'` in single ones), quoted values over several lines, a
//! `#` comment after a space ending an unquoted value, `VAR=a, b` kept whole, and `${VAR}` /
//! `${VAR:-default}` expanded from the environment and the lines above.
//!
//! A statement that cannot be read is skipped, as python-dotenv skips it, but named by its line
//! number (never its text: the value may be a secret), so that an operator learns that a setting
//! was dropped. `tests/operator.rs` reads the same files through python-dotenv and compares.

/// What one file holds, in file order; a later duplicate key wins when collected.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DotEnv {
    /// `KEY=value` bindings; a bare `KEY` (no `=`) has no value and sets nothing.
    pub bindings: Vec<(String, Option<String>)>,
    /// 1-based line numbers of the statements that could not be read.
    pub unreadable: Vec<usize>,
}

/// Parses `text` without expanding `${...}` (see [`DotEnv::expand`]).
pub fn parse(text: &str) -> DotEnv {
    let mut reader = Reader { chars: text.chars().collect(), pos: 0, line: 1 };
    let mut out = DotEnv::default();
    loop {
        reader.skip_while(char::is_whitespace);
        if reader.at_end() {
            return out;
        }
        let line = reader.line;
        match reader.binding() {
            Some(Some(binding)) => out.bindings.push(binding),
            Some(None) => {}
            None => {
                // As python-dotenv: the rest of this line is dropped and reading goes on.
                reader.skip_while(|c| c != '\r' && c != '\n');
                reader.newline();
                out.unreadable.push(line);
            }
        }
    }
}

impl DotEnv {
    /// The values with `${NAME}` and `${NAME:-default}` expanded from `env` overridden by the
    /// bindings above, as python-dotenv's `dotenv_values` does; bare keys are left out.
    pub fn expand(&self, env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut done: Vec<(String, Option<String>)> = Vec::new();
        for (key, value) in &self.bindings {
            let resolved = value.as_ref().map(|v| {
                expand_value(v, |name| match done.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => v.clone(),
                    None => env(name),
                })
            });
            done.push((key.clone(), resolved));
        }
        done.into_iter().filter_map(|(k, v)| Some((k, v?))).collect()
    }
}

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
    let mut j = i + 2;
    let start = j;
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

struct Reader {
    chars: Vec<char>,
    pos: usize,
    /// The line `pos` is on, counting `\r\n`, `\n` and `\r` as one line end each.
    line: usize,
}

/// Whitespace that does not end a line (the `[^\S\r\n]` of python-dotenv's grammar).
fn blank(c: char) -> bool {
    c.is_whitespace() && c != '\r' && c != '\n'
}

impl Reader {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn advance(&mut self) {
        match self.chars[self.pos] {
            '\n' => self.line += 1,
            '\r' if self.chars.get(self.pos + 1) != Some(&'\n') => self.line += 1,
            _ => {}
        }
        self.pos += 1;
    }

    fn skip_while(&mut self, keep: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.advance();
        }
    }

    /// One line end (`\r\n`, `\n` or `\r`), if here.
    fn newline(&mut self) -> bool {
        match self.peek() {
            Some('\r') => {
                self.advance();
                if self.peek() == Some('\n') {
                    self.advance();
                }
                true
            }
            Some('\n') => {
                self.advance();
                true
            }
            _ => false,
        }
    }

    /// One statement: `Some(Some(binding))`, `Some(None)` for a comment, `None` when unreadable.
    fn binding(&mut self) -> Option<Option<(String, Option<String>)>> {
        self.export();
        let key = self.key()?;
        self.skip_while(blank);
        let value = if self.peek() == Some('=') {
            self.advance();
            self.skip_while(blank);
            Some(self.value()?)
        } else {
            None
        };
        self.comment();
        self.skip_while(blank);
        if !(self.newline() || self.at_end()) {
            return None;
        }
        Some(key.map(|k| (k, value)))
    }

    /// `export ` (with at least one blank after it) before a key.
    fn export(&mut self) {
        let word: Vec<char> = "export".chars().collect();
        let end = self.pos + word.len();
        if self.chars.get(self.pos..end) == Some(&word[..]) && self.chars.get(end).is_some_and(|c| blank(*c)) {
            for _ in 0..word.len() {
                self.advance();
            }
            self.skip_while(blank);
        }
    }

    /// `Some(None)` at a comment; a `'quoted'` or bare key; `None` when there is no key.
    fn key(&mut self) -> Option<Option<String>> {
        match self.peek() {
            Some('#') => Some(None),
            Some('\'') => {
                let start = self.pos + 1;
                let len = self.chars[start..].iter().take_while(|c| **c != '\'').count();
                if len == 0 || start + len >= self.chars.len() {
                    return None;
                }
                let key = self.chars[start..start + len].iter().collect();
                for _ in 0..len + 2 {
                    self.advance();
                }
                Some(Some(key))
            }
            _ => {
                let start = self.pos;
                self.skip_while(|c| c != '=' && c != '#' && !c.is_whitespace());
                (self.pos > start).then(|| Some(self.chars[start..self.pos].iter().collect()))
            }
        }
    }

    fn value(&mut self) -> Option<String> {
        match self.peek() {
            Some(q @ ('\'' | '"')) => {
                let raw = self.quoted(q)?;
                Some(unescape(&raw, if q == '"' { "\\'\"abfnrtv" } else { "\\'" }))
            }
            None | Some('\r' | '\n') => Some(String::new()),
            Some(_) => {
                let start = self.pos;
                self.skip_while(|c| c != '\r' && c != '\n');
                let part: Vec<char> = self.chars[start..self.pos].to_vec();
                // A `#` after whitespace starts a comment; a `#` inside a word is kept.
                let cut = (1..part.len()).find(|&i| part[i] == '#' && part[i - 1].is_whitespace());
                let kept: String = part[..cut.unwrap_or(part.len())].iter().collect();
                Some(kept.trim_end().to_string())
            }
        }
    }

    /// A value in `q` quotes, over several lines if it runs on; `\q` does not close it, unless no
    /// later quote does (python-dotenv's regular expression backtracks to the last `\q`).
    fn quoted(&mut self, q: char) -> Option<String> {
        let start = self.pos + 1;
        let mut i = start;
        let mut last_escaped = None;
        let close = loop {
            match self.chars.get(i) {
                None => break last_escaped?,
                Some('\\') if self.chars.get(i + 1) == Some(&q) => {
                    last_escaped = Some(i + 1);
                    i += 2;
                }
                Some(c) if *c == q => break i,
                Some(_) => i += 1,
            }
        };
        let raw = self.chars[start..close].iter().collect();
        while self.pos <= close {
            self.advance();
        }
        Some(raw)
    }

    /// An optional ` # comment` to the end of the line.
    fn comment(&mut self) {
        let mut i = self.pos;
        while self.chars.get(i).is_some_and(|c| blank(*c)) {
            i += 1;
        }
        if self.chars.get(i) == Some(&'#') {
            self.skip_while(|c| c != '\r' && c != '\n');
        }
    }
}

/// Decodes `\x` for each `x` in `escapes` (python-dotenv's `unicode-escape` of those pairs);
/// any other backslash stays as written.
fn unescape(raw: &str, escapes: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match chars.peek() {
            Some(&e) if c == '\\' && escapes.contains(e) => {
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
