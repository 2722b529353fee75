//! Splits a SQL script into statements and COPY data rows, streaming, with line numbers:
//! quotes ('…', E'…', "…", $tag$…$tag$), comments (-- and nested /* */), psql
//! meta-commands (lines starting with a backslash) and `COPY … FROM stdin` blocks ending at
//! `\.`. It never holds more than one statement or one data row in memory.

use std::collections::VecDeque;
use std::io::BufRead;

/// One piece of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A statement without its terminating `;`, starting at `line` (1-based).
    Statement { line: usize, text: String },
    /// A psql meta-command line such as `\connect`.
    Meta { line: usize, text: String },
    /// One data line of a COPY block.
    CopyRow { line: usize, text: String },
    /// The `\.` ending a COPY block.
    CopyEnd { line: usize },
}

/// A script that cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Normal,
    Single { escapes: bool },
    Double,
    Dollar(String),
    Block(u32),
}

/// Streaming splitter over a buffered reader.
pub struct ScriptReader<R> {
    r: R,
    line_no: usize,
    state: State,
    quote_line: usize,
    buf: String,
    stmt_line: usize,
    /// Parenthesis depth: `;` inside parentheses (e.g. CREATE RULE … DO (…; …)) does not end
    /// a statement, as in psql.
    parens: i32,
    copy_from: Option<usize>,
    pending: VecDeque<Item>,
    done: bool,
}

impl<R: BufRead> ScriptReader<R> {
    pub fn new(r: R) -> Self {
        Self {
            r,
            line_no: 0,
            state: State::Normal,
            quote_line: 0,
            buf: String::new(),
            stmt_line: 0,
            parens: 0,
            copy_from: None,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn err(&self, line: usize, message: impl Into<String>) -> ScriptError {
        ScriptError {
            line,
            message: message.into(),
        }
    }

    fn emit_statement(&mut self) {
        let text = self.buf.trim().to_string();
        self.buf.clear();
        if text.is_empty() {
            return;
        }
        if is_copy_from_stdin(&text) {
            self.copy_from = Some(self.stmt_line);
        }
        self.pending.push_back(Item::Statement {
            line: self.stmt_line,
            text,
        });
    }

    /// Scans one line (without its newline) in statement mode.
    fn scan(&mut self, line: &str) {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        if self.state == State::Normal && self.buf.trim().is_empty() && line.starts_with('\\') {
            self.pending.push_back(Item::Meta {
                line: self.line_no,
                text: line.to_string(),
            });
            return;
        }
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            match &self.state {
                State::Normal => {
                    if self.buf.trim().is_empty() && !c.is_whitespace() {
                        self.stmt_line = self.line_no;
                    }
                    match c {
                        '-' if next == Some('-') => return self.buf.push('\n'),
                        '/' if next == Some('*') => {
                            self.state = State::Block(1);
                            i += 2;
                            continue;
                        }
                        '(' => {
                            self.parens += 1;
                            self.buf.push(c);
                        }
                        ')' => {
                            self.parens -= 1;
                            self.buf.push(c);
                        }
                        ';' if self.parens > 0 => self.buf.push(c),
                        ';' => {
                            self.parens = 0;
                            self.emit_statement();
                            if self.copy_from.is_some() {
                                return; // data starts on the next line
                            }
                        }
                        '\'' => {
                            let prev = if i > 0 { Some(chars[i - 1]) } else { None };
                            let before = if i > 1 { Some(chars[i - 2]) } else { None };
                            let escapes = matches!(prev, Some('e' | 'E'))
                                && !before.is_some_and(|b| b.is_alphanumeric() || b == '_');
                            self.state = State::Single { escapes };
                            self.quote_line = self.line_no;
                            self.buf.push(c);
                        }
                        '"' => {
                            self.state = State::Double;
                            self.quote_line = self.line_no;
                            self.buf.push(c);
                        }
                        '$' => {
                            let prev_ident =
                                i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
                            let mut j = i + 1;
                            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_')
                            {
                                j += 1;
                            }
                            let tag_ok = j < chars.len()
                                && chars[j] == '$'
                                && !prev_ident
                                && !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
                            if tag_ok {
                                let tag: String = chars[i..=j].iter().collect();
                                self.buf.push_str(&tag);
                                self.quote_line = self.line_no;
                                self.state = State::Dollar(tag);
                                i = j + 1;
                                continue;
                            }
                            self.buf.push(c);
                        }
                        _ => self.buf.push(c),
                    }
                }
                State::Single { escapes } => {
                    self.buf.push(c);
                    if *escapes && c == '\\' {
                        if let Some(n) = next {
                            self.buf.push(n);
                            i += 1;
                        }
                    } else if c == '\'' {
                        if next == Some('\'') {
                            self.buf.push('\'');
                            i += 1;
                        } else {
                            self.state = State::Normal;
                        }
                    }
                }
                State::Double => {
                    self.buf.push(c);
                    if c == '"' {
                        if next == Some('"') {
                            self.buf.push('"');
                            i += 1;
                        } else {
                            self.state = State::Normal;
                        }
                    }
                }
                State::Dollar(tag) => {
                    let tag = tag.clone();
                    let rest: String = chars[i..].iter().take(tag.chars().count()).collect();
                    if rest == tag {
                        self.buf.push_str(&tag);
                        self.state = State::Normal;
                        i += tag.chars().count();
                        continue;
                    }
                    self.buf.push(c);
                }
                State::Block(depth) => {
                    let depth = *depth;
                    if c == '*' && next == Some('/') {
                        self.state = if depth == 1 {
                            State::Normal
                        } else {
                            State::Block(depth - 1)
                        };
                        self.buf.push(' ');
                        i += 2;
                        continue;
                    }
                    if c == '/' && next == Some('*') {
                        self.state = State::Block(depth + 1);
                        i += 2;
                        continue;
                    }
                }
            }
            i += 1;
        }
        if !matches!(self.state, State::Block(_)) {
            self.buf.push('\n');
        }
    }

    fn fill(&mut self) -> Result<(), ScriptError> {
        while self.pending.is_empty() && !self.done {
            let mut raw = Vec::new();
            let n = self
                .r
                .read_until(b'\n', &mut raw)
                .map_err(|e| self.err(self.line_no + 1, format!("read error: {e}")))?;
            if n == 0 {
                self.done = true;
                if let Some(start) = self.copy_from {
                    return Err(self.err(
                        start,
                        "the COPY data starting here ends without a `\\.` line (is the script truncated?)",
                    ));
                }
                match self.state {
                    State::Normal => self.emit_statement(),
                    State::Block(_) => {
                        return Err(self.err(self.quote_line.max(1), "unterminated /* comment"))
                    }
                    _ => {
                        return Err(self.err(
                            self.quote_line,
                            "a quoted string or identifier starting on this line is never closed",
                        ))
                    }
                }
                break;
            }
            self.line_no += 1;
            let line = String::from_utf8(raw)
                .map_err(|_| self.err(self.line_no, "the script is not valid UTF-8"))?;
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if self.copy_from.is_some() {
                if line == "\\." {
                    self.copy_from = None;
                    self.pending.push_back(Item::CopyEnd { line: self.line_no });
                } else {
                    self.pending.push_back(Item::CopyRow {
                        line: self.line_no,
                        text: line.to_string(),
                    });
                }
                continue;
            }
            if matches!(self.state, State::Block(_))
                && self.buf.trim().is_empty()
                && self.quote_line == 0
            {
                self.quote_line = self.line_no;
            }
            self.scan(line);
        }
        Ok(())
    }
}

impl<R: BufRead> Iterator for ScriptReader<R> {
    type Item = Result<Item, ScriptError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            self.done = true;
            self.pending.clear();
            return Some(Err(e));
        }
        self.pending.pop_front().map(Ok)
    }
}

/// `COPY <table> [(cols)] FROM stdin` (any case, any spacing).
pub fn is_copy_from_stdin(stmt: &str) -> bool {
    let up = stmt.to_ascii_uppercase();
    let words: Vec<&str> = up.split_whitespace().collect();
    words.first() == Some(&"COPY")
        && words
            .windows(2)
            .any(|w| w[0] == "FROM" && w[1].trim_end_matches(';') == "STDIN")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(s: &str) -> Vec<Result<Item, ScriptError>> {
        ScriptReader::new(s.as_bytes()).collect()
    }

    #[test]
    fn statements_quotes_comments_and_copy() {
        let script = "-- header; not a statement\nSET x = 1;\nINSERT INTO t VALUES ('a;b', E'c\\';d', $$e;f$$, \"g;h\");\n/* block; /* nested; */ still */ SELECT 1; SELECT 2;\nCOPY t (a) FROM stdin;\n1\\t;\n\\.\n\\connect db\nSELECT $tag$ x $$ ; $tag$";
        let got: Vec<Item> = items(script).into_iter().map(Result::unwrap).collect();
        let want = vec![
            Item::Statement {
                line: 2,
                text: "SET x = 1".into(),
            },
            Item::Statement {
                line: 3,
                text: "INSERT INTO t VALUES ('a;b', E'c\\';d', $$e;f$$, \"g;h\")".into(),
            },
            Item::Statement {
                line: 4,
                text: "SELECT 1".into(),
            },
            Item::Statement {
                line: 4,
                text: "SELECT 2".into(),
            },
            Item::Statement {
                line: 5,
                text: "COPY t (a) FROM stdin".into(),
            },
            Item::CopyRow {
                line: 6,
                text: "1\\t;".into(),
            },
            Item::CopyEnd { line: 7 },
            Item::Meta {
                line: 8,
                text: "\\connect db".into(),
            },
            Item::Statement {
                line: 9,
                text: "SELECT $tag$ x $$ ; $tag$".into(),
            },
        ];
        assert_eq!(got, want);
        let got: Vec<Item> =
            items("CREATE RULE r AS ON INSERT TO t DO (SELECT 1; SELECT 2);\nSELECT 3;")
                .into_iter()
                .map(Result::unwrap)
                .collect();
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn truncated_copy_and_open_quote_name_the_line() {
        let e = items("SELECT 1;\nCOPY t FROM stdin;\n1\n2\n")
            .pop()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("\\."));
        let e = items("SELECT 1;\nINSERT INTO t VALUES ('oops);\nSELECT 2;\n")
            .pop()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("never closed"));
    }
}

#[cfg(test)]
mod fuzz {
    //! `snapfleet import` reads scripts a user hands it (or a bucket holds): any text must
    //! split into statements or fail with a line number, never panic or loop.
    use super::*;
    use proptest::prelude::*;

    fn sqlish() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("'"),
                Just("\""),
                Just("$$"),
                Just("$tag$"),
                Just(";"),
                Just("("),
                Just(")"),
                Just("\n"),
                Just("--"),
                Just("/*"),
                Just("*/"),
                Just("\\."),
                Just("COPY t FROM stdin;\n"),
                Just("E'\\''"),
                Just("SELECT 1"),
                Just(" "),
                Just("x"),
            ],
            0..64,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn any_script_splits_or_fails_cleanly(text in sqlish()) {
            let n = ScriptReader::new(std::io::Cursor::new(text.clone())).take(10_000).count();
            // At most one item per byte plus one: no statement is produced from nothing.
            prop_assert!(n <= text.len() + 1, "{n} items from {} bytes", text.len());
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = ScriptReader::new(std::io::Cursor::new(bytes)).take(10_000).count();
        }
    }
}
