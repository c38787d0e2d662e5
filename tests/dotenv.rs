//! `.env` files read side by side by python-dotenv 1.2.4 (the Python miner's parser, pinned in
//! tests/requirements.txt) and by `loosh_miner::config::dotenv`: written files for each construct
//! of the grammar and for the cases operators met, then thousands of generated ones. Values
//! (`None` for a bare key included, key order included) and the numbers of the lines that cannot
//! be read must agree on every file, both as a file is read (`dotenv_values(path)`) and as the
//! grammar reads raw text (`dotenv_values(stream=...)`, where `\r` is not translated).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use loosh_miner::config::dotenv;

/// What one reading gives: `dotenv_values()`'s dict in order, and the unreadable lines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reading {
    values: Vec<(String, Option<String>)>,
    lines: Vec<usize>,
}

impl Reading {
    fn get(&self, key: &str) -> Option<Option<&str>> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_deref())
    }
}

/// python-dotenv's readings of `files` (as a file, as a stream), all in one Python process, with
/// exactly `env` as its environment.
fn python(files: &[PathBuf], env: &[(&str, &str)]) -> Vec<(Reading, Reading)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/dotenv_side_by_side.py");
    let mut child = Command::new(common::python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test venv's python runs (scripts/install.sh --test)");
    let request = serde_json::json!({
        "env": env.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
        "files": files.iter().map(|p| p.to_str().unwrap()).collect::<Vec<_>>(),
    });
    let mut stdin = child.stdin.take().unwrap();
    let body = request.to_string();
    // Written from a thread: the answers fill the stdout pipe while the request is still going in.
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reading = |r: &serde_json::Value| Reading {
        values: r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| (kv[0].as_str().unwrap().to_string(), kv[1].as_str().map(str::to_string)))
            .collect(),
        lines: r["lines"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap() as usize).collect(),
    };
    let answers: Vec<(Reading, Reading)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            (reading(&r["file"]), reading(&r["stream"]))
        })
        .collect();
    assert_eq!(answers.len(), files.len(), "one answer per file");
    answers
}

/// Ours, on the same file and environment: as the miner reads a file, and on the raw text.
fn ours(path: &Path, env: &[(&str, &str)]) -> (Reading, Reading) {
    let text = std::fs::read_to_string(path).unwrap();
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    let read = |parsed: dotenv::DotEnv| Reading { values: parsed.values(lookup), lines: parsed.unreadable };
    (read(dotenv::parse(&text)), read(dotenv::parse_stream(&text)))
}

/// Writes each text to its own file and compares both readers on every one; a disagreement
/// names the file's text and both readings. Returns python-dotenv's readings (as files).
fn side_by_side(dir: &Path, texts: &[String], env: &[(&str, &str)]) -> Vec<Reading> {
    let files: Vec<PathBuf> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.join(format!("{i}.env"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let theirs = python(&files, env);
    let mut differ = Vec::new();
    for ((path, text), (file, stream)) in files.iter().zip(texts).zip(&theirs) {
        let (our_file, our_stream) = ours(path, env);
        if (&our_file, &our_stream) != (file, stream) {
            differ.push(format!(
                "{text:?}\n  python-dotenv: {file:?}\n  ours:          {our_file:?}\n  \
                 as a stream, python-dotenv: {stream:?}\n  as a stream, ours:          {our_stream:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} files read differently; the first:\n{}",
        differ.len(),
        texts.len(),
        differ.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    theirs.into_iter().map(|(file, _)| file).collect()
}

const ENV: &[(&str, &str)] = &[("FROM_ENV", "env"), ("A", "a-from-env"), ("HOME", "/home/x")];

#[test]
fn the_six_ways_the_python_dotenv_1_1_grammar_differed_read_as_1_2_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<String> = [
        // 0, 1: a quoted value ending in an escaped backslash ends at its quote.
        "A=\"x\\\\\"\nB=after\n",
        "A='x\\\\'\nB=after\n",
        // 2: whitespace, then `#`, after `=` is an empty value and a comment.
        "KEY= # comment\nB=after\n",
        // 3: a bare key unsets it, and `${KEY:-d}` then expands to "" (not its default).
        "KEY=1\nKEY\nD=${KEY:-d}\n",
        // 4: a double-quoted value left unclosed at the end of the file is unreadable.
        "B=before\nA=\"never closed\nstill not",
        // 5: an unreadable statement is numbered from where the blank lines before it begin.
        "A=1\n\n\nbad line\nB=2\n\n'unclosed\n",
        // 6: U+001C..U+001F are whitespace to Python: before `#` and around `=`.
        "A=value\u{1c}# comment\nB=v\u{1f}#c\nC\u{1d}=\u{1e}x\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let read = side_by_side(dir.path(), &cases, ENV);
    assert_eq!(read[0].get("A"), Some(Some("x\\")));
    assert_eq!(read[0].get("B"), Some(Some("after")), "the next line is not swallowed");
    assert_eq!(read[1].get("A"), Some(Some("x\\")));
    assert_eq!(read[1].get("B"), Some(Some("after")));
    assert_eq!(read[2].get("KEY"), Some(Some("")));
    assert_eq!(read[2].get("B"), Some(Some("after")));
    assert_eq!(read[3].get("KEY"), Some(None), "unset");
    assert_eq!(read[3].get("D"), Some(Some("")));
    assert_eq!(read[4].get("A"), None);
    assert_eq!(read[4].get("B"), Some(Some("before")));
    assert_eq!(read[4].lines, vec![2, 3], "its line and the one after it, each skipped alone");
    assert_eq!(read[5].lines, vec![2, 6], "where the blank lines before each begin");
    assert_eq!(read[5].get("B"), Some(Some("2")));
    assert_eq!(read[6].get("A"), Some(Some("value")));
    assert_eq!(read[6].get("B"), Some(Some("v")));
    assert_eq!(read[6].get("C"), Some(Some("x")));
}

#[test]
fn every_construct_of_the_grammar_is_read_as_python_dotenv_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<String> = [
        // Blank text, blank lines, comments.
        "",
        "\n\n  \n\t\n",
        "# only a comment",
        "   # indented comment\nA=1",
        "\u{feff}A=after a byte-order mark\n",
        "\u{feff}\u{feff}A=two marks\n",
        // `export`.
        "export A=1\nexport\tB=2\nexport  C = 3\n",
        "export=1\nexportD=2\n",
        "export\nexport \nexport #c\n",
        // Keys.
        "'QUOTED KEY'=1\n'a=b'=2\n''=3\n'unclosed=4\n",
        "'multi\nline'=5\n",
        "A.B-C/d=1\nKEY:1=2\nK\u{e9}=3\n",
        "=novalue\n =x\n",
        "BAD KEY=1\nOK=2\n",
        "A\t = \t1\n",
        "A#=1\nB#c\n",
        // Bare values.
        "A=plain\nB=a, b\nC=no#comment\nD=kept # dropped\nE=tab\t#dropped\nF=trailing   \n",
        "A=#novalue\nB= #comment\nC=\t#comment\nD=  \nE=\n",
        "A=$A ${A} ${A:-d} ${MISSING:-fallback} ${MISSING} ${A:d} ${} ${:-x} $${A}\n",
        "A=\\n not an escape \\\"\n",
        "A=x\u{a0}#nbsp\nB=x\u{85}#nel\nC=x\u{2028}#ls\nD=x\u{b}#vt\nE=x\u{c}#ff\n",
        "A=1 2  3\u{3000}\n",
        // Single quotes.
        "A='single'\nB='it''s'\nC='a \\' b'\nD='\\\\'\nE='\\n stays'\n",
        "A='multi\nline'\nB='x' # comment\nC='x'junk\nD=''\n",
        "A='unclosed\nB=2\n",
        "A='ends in backslash\\'\nB=2\n",
        // Double quotes.
        "A=\"double\"\nB=\"\\t\\n\\r\\a\\b\\f\\v\\\\\\'\\\"\"\nC=\"\\x \\u00e9 \\N \\0\"\n",
        "A=\"multi\nline\"\nB=\"x\" # comment\nC=\"x\"junk\nD=\"\"\n",
        "A=\"x\\\\\\\"y\"\nB=\"\\\\\\\\\"\n",
        "A=\"${A}-${FROM_ENV}\"\nB='${A}'\n",
        "A=\"unclosed\nB=2\nC=\"closed here\"\n",
        "A=\"x\" \t\nB=\"y\"\t# c\n",
        // Duplicates, bare keys and interpolation order.
        "A=1\nB=${A}\nA=2\nC=${A}\nA\nD=${A:-d}\nA=3\n",
        "X=${Y}\nY=later\nZ=${Y}\n",
        "FROM_ENV=file\nG=${FROM_ENV}\n",
        "N=${N}x\nN=${N}y\n",
        // Line ends: CRLF, CR, mixed, and unreadable lines among them.
        "A=1\r\nB=\"two\r\nlines\"\r\nbad line\r\nC=3\r\n",
        "A=1\rB=2\rbad line\rC=3\r",
        "bad\r\n\r\nbad again\r\nA=1\r\n",
        "A='x'\r\nB='y'junk\r\nC=\"z\"\r\n",
        "A=1\n\r\n\rB=2\n",
        // Whitespace that only Python calls whitespace, and the last line without its end.
        "\u{1c}A=1\u{1f}\n\u{1e}\n",
        "A=1\nB=2",
        "A=1\nbad",
        "A=\"x\"  ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    side_by_side(dir.path(), &cases, ENV);
}

#[test]
fn the_operators_env_example_uncommented_is_read_as_python_dotenv_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    // env.example with every commented setting uncommented (the WORKERS examples among them).
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/env.example")).unwrap();
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest
                    .split('=')
                    .next()
                    .is_some_and(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                    && rest.contains('=') =>
            {
                rest.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.contains("\nWORKERS=[{"), "the WORKERS examples are uncommented");
    let read = side_by_side(dir.path(), &[example, uncommented], ENV);
    let workers = read[1].get("WORKERS").flatten().unwrap();
    assert!(workers.starts_with("[{"), "{workers}");
}

/// splitmix64: a fixed seed gives the same files on every machine and every version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// The grammar's alphabet: quotes, backslashes, `#`, `=`, `${}`, blanks (Python's and Rust's),
/// line ends, and plain text.
const TOKENS: &[&str] = &[
    "=", "=", " ", " ", "\t", "'", "'", "\"", "\"", "\\", "\\", "\\\\", "\\\"", "\\'", "\\n", "#", "#", " #", "${A}",
    "${B:-d}", "${C:-}", "${", "}", ":-", "$", "x", "y", "A", "B", "export ", "\u{e9}", "\u{b}", "\u{c}", "\u{1c}",
    "\u{1f}", "\u{a0}", "\u{85}", "\u{2028}", "\u{3000}", "\r", "\n", "\r\n",
];
const KEYS: &[&str] = &["A", "B", "C", "FROM_ENV", "'Q'", "'A'", "export", "K.x", "''", "'"];
const BLANKS: &[&str] = &["", "", "", " ", "\t", "  ", "\u{1c}", "\u{a0}"];
const ENDS: &[&str] = &["\n", "\n", "\n", "\n", "\r\n", "\r\n", "\r"];

fn soup(rng: &mut Rng, max: usize) -> String {
    (0..rng.below(max + 1)).map(|_| rng.pick(TOKENS)).collect()
}

/// One line: mostly `KEY = value # comment` with random parts, sometimes any tokens at all.
fn line(rng: &mut Rng) -> String {
    match rng.below(20) {
        0..=11 => {
            let mut s = String::new();
            s += rng.pick(BLANKS);
            if rng.chance(15) {
                s += "export";
                s += rng.pick(&[" ", "\t", " \t", ""]);
            }
            s += rng.pick(KEYS);
            s += rng.pick(BLANKS);
            if rng.chance(90) {
                s += "=";
                s += rng.pick(BLANKS);
                match rng.below(4) {
                    0 => s += &soup(rng, 4),
                    1 => {
                        let q = rng.pick(&["'", "\""]);
                        s += q;
                        s += &soup(rng, 5);
                        if rng.chance(85) {
                            s += q;
                        }
                    }
                    2 => s += rng.pick(&["${A}", "${B:-d}", "${MISSING:-f}", "${FROM_ENV}x", "x${A}y"]),
                    _ => {}
                }
            }
            s += rng.pick(BLANKS);
            if rng.chance(25) {
                s += "#";
                s += &soup(rng, 3);
            }
            s
        }
        12..=15 => soup(rng, 8),
        16 | 17 => rng.pick(BLANKS).to_string(),
        _ => format!("{}#{}", rng.pick(BLANKS), soup(rng, 3)),
    }
}

fn generated_file(rng: &mut Rng) -> String {
    let mut text = String::new();
    if rng.chance(3) {
        text.push('\u{feff}');
    }
    let lines = rng.below(11);
    for i in 0..lines {
        text += &line(rng);
        if i + 1 < lines || rng.chance(80) {
            text += rng.pick(ENDS);
        }
    }
    text
}

/// How many generated files are compared (each read as a file and as a stream).
const GENERATED: usize = 10_000;

#[test]
fn generated_files_are_read_as_python_dotenv_reads_them_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(34);
    let texts: Vec<String> = (0..GENERATED).map(|_| generated_file(&mut rng)).collect();
    let read = side_by_side(dir.path(), &texts, ENV);
    // The generator reaches every kind of outcome, not only unreadable lines.
    let unreadable: usize = read.iter().map(|r| r.lines.len()).sum();
    let values: Vec<&Option<String>> = read.iter().flat_map(|r| r.values.iter().map(|(_, v)| v)).collect();
    let bare = values.iter().filter(|v| v.is_none()).count();
    let multiline = values.iter().filter(|v| v.as_deref().is_some_and(|v| v.contains('\n'))).count();
    let backslash = values.iter().filter(|v| v.as_deref().is_some_and(|v| v.ends_with('\\'))).count();
    eprintln!(
        "{GENERATED} generated files agree: {} values ({bare} bare keys, {multiline} over several lines, \
         {backslash} ending in a backslash), {unreadable} unreadable lines",
        values.len()
    );
    for (what, n) in [("unreadable lines", unreadable), ("bare keys", bare), ("multi-line values", multiline)] {
        assert!(n >= 50, "only {n} {what} among {GENERATED} files");
    }
    assert!(values.len() >= GENERATED, "{} values", values.len());
    assert!(backslash >= 10, "{backslash} values ending in a backslash");
}
