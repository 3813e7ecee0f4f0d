//! The YAML stream: cut into documents, each injected on its parsed tree and written back,
//! or copied byte for byte when nothing changed.

use std::sync::Arc;

use serde_norway::Value;

use super::pod::Doc;
use super::{InjectError, InjectOptions, InjectReport, Outcome};

/// Injects the sidecar into every pod template of the YAML stream `input`; see the module
/// docs for what changes and what is kept. Fails without output on invalid options, a
/// document that is not YAML, or a workload whose pod template has the wrong shape.
pub fn inject(input: &str, options: &InjectOptions) -> Result<InjectReport, InjectError> {
    options.validate()?;
    let mut output = String::with_capacity(input.len() + 2048);
    let mut objects = Vec::new();
    let mut document = 0;
    for chunk in split_documents(input) {
        if !has_content(chunk.text) {
            output.push_str(chunk.text);
            continue;
        }
        document += 1;
        let original: Value =
            serde_norway::from_str(chunk.text).map_err(|source| InjectError::Parse {
                document,
                line: chunk.line,
                source: Arc::new(source),
            })?;
        let mut changed = original.clone();
        let doc = Doc { document, options };
        let before = objects.len();
        if let Value::Mapping(object) = &mut changed {
            doc.object(object, &mut objects)?;
        }
        if changed == original {
            for report in &mut objects[before..] {
                if report.outcome == Outcome::Injected {
                    report.outcome = Outcome::AlreadyInjected;
                }
            }
            output.push_str(chunk.text);
        } else {
            let text =
                serde_norway::to_string(&changed).map_err(|source| InjectError::Serialize {
                    document,
                    source: Arc::new(source),
                })?;
            output.push_str(&head(chunk.text));
            output.push_str(&text);
        }
    }
    Ok(InjectReport { output, objects })
}

/// One document of a stream: its text, from its `---` line (if any) to the next one.
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line where it starts.
    line: usize,
}

/// Cuts a YAML stream at its document markers: a line that starts with `---` followed by
/// a space, a tab or the line's end (YAML 1.2 §9.1; such a line cannot occur inside a
/// scalar). Concatenating the chunks gives `input` back.
fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (index, line) in input.split_inclusive('\n').enumerate() {
        if is_marker(line) && offset > start {
            chunks.push(Chunk {
                text: &input[start..offset],
                line: start_line,
            });
            (start, start_line) = (offset, index + 1);
        }
        offset += line.len();
    }
    if offset > start {
        chunks.push(Chunk {
            text: &input[start..],
            line: start_line,
        });
    }
    chunks
}

fn is_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether a chunk holds more than markers, directives, comments and blank lines.
fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|line| {
        let line = line.trim();
        let rest = if is_marker(line) {
            line[3..].trim()
        } else {
            line
        };
        !(rest.is_empty() || rest.starts_with('#') || line.starts_with('%') || rest == "...")
    })
}

/// The lines at the head of a chunk kept when it is rewritten: its `---` line and the
/// comment and blank lines before the first content line.
fn head(chunk: &str) -> String {
    let mut head = String::new();
    for line in chunk.split_inclusive('\n') {
        let trimmed = line.trim();
        if is_marker(line) {
            // Content on the marker line itself is re-emitted below, so keep only `---`.
            let rest = trimmed[3..].trim();
            head.push_str(if rest.is_empty() || rest.starts_with('#') {
                line
            } else {
                "---\n"
            });
        } else if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('%') {
            head.push_str(line);
        } else {
            break;
        }
    }
    if !head.is_empty() && !head.ends_with('\n') {
        head.push('\n');
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte_and_cuts_only_at_markers() {
        let input = "# head\na: 1\n---\nb: |\n  --- not a marker\n--- # c\nc: 3\n---x: no\n";
        let chunks = split_documents(input);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text).collect();
        assert_eq!(
            texts,
            [
                "# head\na: 1\n",
                "---\nb: |\n  --- not a marker\n",
                "--- # c\nc: 3\n---x: no\n"
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.line).collect::<Vec<_>>(), [1, 3, 6]);
        assert_eq!(texts.concat(), input);
    }

    #[test]
    fn head_keeps_marker_and_leading_comments() {
        assert_eq!(head("---\n# web\n\nkind: Pod\n# tail\n"), "---\n# web\n\n");
        assert_eq!(head("--- {kind: Pod}\n"), "---\n");
        assert!(!has_content("---\n# only a comment\n...\n"));
    }
}
