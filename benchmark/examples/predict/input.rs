//! Sentences to predict, one per input line: plain text, CSV (a `text` column, else the
//! first) or JSON Lines (a `"text"` field), each kept with its line number.

use std::io::BufRead;

use clap::ValueEnum;

/// How the input's lines hold sentences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One sentence per line.
    Text,
    /// Comma-separated with a header row: the `text` column, else the first.
    Csv,
    /// One JSON object per line with a string field `text`.
    Jsonl,
}

impl Format {
    /// The format a file's extension names (`.csv`, `.jsonl` / `.json`), else text.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("jsonl" | "json") => Format::Jsonl,
            _ => Format::Text,
        }
    }
}

/// A sentence and the input line it came from (1-based).
#[derive(Debug, PartialEq)]
pub struct Sentence {
    pub line: usize,
    pub text: String,
}

/// A line that holds no sentence, and why.
#[derive(Debug, PartialEq)]
pub struct Malformed {
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// Every sentence of `reader`, and every line that holds none. Blank lines of text and
/// JSON Lines input are skipped silently; an empty sentence is malformed.
pub fn read(
    reader: impl BufRead,
    format: Format,
) -> std::io::Result<(Vec<Sentence>, Vec<Malformed>)> {
    match format {
        Format::Csv => Ok(read_csv(reader)),
        Format::Text | Format::Jsonl => {
            let (mut ok, mut bad) = (Vec::new(), Vec::new());
            for (i, line) in reader.lines().enumerate() {
                let line_no = i + 1;
                let line = match line {
                    Ok(l) => l,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        bad.push(Malformed {
                            line: line_no,
                            why: "not valid UTF-8".into(),
                        });
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if line.trim().is_empty() {
                    continue;
                }
                let text = match format {
                    Format::Jsonl => json_text(&line),
                    _ => Ok(line),
                };
                push(&mut ok, &mut bad, line_no, text);
            }
            Ok((ok, bad))
        }
    }
}

fn push(
    ok: &mut Vec<Sentence>,
    bad: &mut Vec<Malformed>,
    line: usize,
    text: Result<String, String>,
) {
    match text {
        Ok(t) if t.trim().is_empty() => bad.push(Malformed {
            line,
            why: "empty sentence".into(),
        }),
        Ok(text) => ok.push(Sentence { line, text }),
        Err(why) => bad.push(Malformed { line, why }),
    }
}

fn json_text(line: &str) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    v.get("text")
        .and_then(|t| t.as_str())
        .map(String::from)
        .ok_or_else(|| "no string field \"text\"".into())
}

fn read_csv(reader: impl BufRead) -> (Vec<Sentence>, Vec<Malformed>) {
    let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let column = csv
        .headers()
        .ok()
        .and_then(|h| h.iter().position(|c| c.trim() == "text"))
        .unwrap_or(0);
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for record in csv.records() {
        match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line() as usize);
                let text = r
                    .get(column)
                    .map(String::from)
                    .ok_or_else(|| format!("no column {}", column + 1));
                push(&mut ok, &mut bad, line, text);
            }
            Err(e) => bad.push(Malformed {
                line: e.position().map_or(0, |p| p.line() as usize),
                why: e.to_string(),
            }),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ok: &[Sentence]) -> Vec<(usize, &str)> {
        ok.iter().map(|s| (s.line, s.text.as_str())).collect()
    }

    #[test]
    fn text_lines_keep_their_numbers_and_skip_blanks() {
        let (ok, bad) = read("good film\n\n  \nbad film\n".as_bytes(), Format::Text).unwrap();
        assert_eq!(lines(&ok), [(1, "good film"), (4, "bad film")]);
        assert!(bad.is_empty());
    }

    #[test]
    fn jsonl_lines_without_text_are_malformed_with_their_line() {
        let input =
            "{\"text\": \"fine\"}\n{\"txt\": \"x\"}\nnot json\n{\"text\": 3}\n{\"text\": \" \"}\n";
        let (ok, bad) = read(input.as_bytes(), Format::Jsonl).unwrap();
        assert_eq!(lines(&ok), [(1, "fine")]);
        let at: Vec<usize> = bad.iter().map(|m| m.line).collect();
        assert_eq!(at, [2, 3, 4, 5]);
        assert!(bad[1].to_string().starts_with("line 3: not a JSON object"));
        assert_eq!(bad[3].why, "empty sentence");
    }

    #[test]
    fn csv_reads_the_text_column_and_names_bad_records() {
        let mut input = b"id,text\n1,\"a film, and a good one\"\n2\n3,".to_vec();
        input.extend(b"\xff\n4,\"\"\n");
        let (ok, bad) = read(&input[..], Format::Csv).unwrap();
        assert_eq!(lines(&ok), [(2, "a film, and a good one")]);
        let at: Vec<usize> = bad.iter().map(|m| m.line).collect();
        assert_eq!(at, [3, 4, 5]);
        assert_eq!(bad[0].why, "no column 2");
        assert!(bad[1].why.contains("UTF-8"), "{}", bad[1].why);
        assert_eq!(bad[2].why, "empty sentence");
    }

    #[test]
    fn invalid_utf8_is_a_malformed_line_not_an_abort() {
        let input: &[u8] = b"ok\n\xff\xfe\nalso ok\n";
        let (ok, bad) = read(input, Format::Text).unwrap();
        assert_eq!(lines(&ok), [(1, "ok"), (3, "also ok")]);
        assert_eq!(
            bad,
            [Malformed {
                line: 2,
                why: "not valid UTF-8".into()
            }]
        );
    }
}
