//! The core ABI reference (`wit/core-abi.md`) against what the host links:
//! its one signature table must list exactly the functions the module
//! linker defines under `isola:task` and `wasi`, with their core types.

#![cfg(test)]

use std::collections::BTreeSet;

/// The reference document, read at compile time so the test needs no file
/// access at run time.
const CORE_ABI: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/core-abi.md"));

/// The header of the signature table, exactly.
const HEADER: [&str; 4] = ["module", "name", "params", "results"];

/// The modules whose imports the table must list in full.
const MODULES: [&str; 2] = ["isola:task", "wasi"];

/// One import: module, name, parameter types, result types.
type Row = (String, String, Vec<String>, Vec<String>);

/// The cells of a markdown table line (`| a | b |`), trimmed, with code
/// quotes removed; `None` if the line is not a table line.
fn cells(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    Some(
        inner
            .split('|')
            .map(|cell| cell.trim().trim_matches('`').trim().to_owned())
            .collect(),
    )
}

/// A separator line (`|---|:--:|`).
fn is_separator(cells: &[String]) -> bool {
    cells
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
}

/// Space-separated core types, lower-cased.
fn types(cell: &str) -> Vec<String> {
    cell.split_whitespace().map(str::to_lowercase).collect()
}

/// Every row of every table in `doc` whose header is [`HEADER`], and how
/// many such tables there are.
fn signature_tables(doc: &str) -> (usize, Vec<Row>) {
    let mut tables = 0;
    let mut rows = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(header) = cells(line) else { continue };
        if header != HEADER {
            continue;
        }
        tables += 1;
        let separator = lines.next().and_then(cells);
        assert!(
            separator.as_deref().is_some_and(is_separator),
            "the signature table's header is not followed by a separator line"
        );
        for line in lines.by_ref() {
            let Some(row) = cells(line) else { break };
            assert_eq!(
                row.len(),
                HEADER.len(),
                "a signature table row needs {} cells: `{line}`",
                HEADER.len()
            );
            rows.push((
                row[0].clone(),
                row[1].clone(),
                types(&row[2]),
                types(&row[3]),
            ));
        }
    }
    (tables, rows)
}

fn show(rows: &BTreeSet<Row>) -> String {
    rows.iter()
        .map(|(module, name, params, results)| {
            format!(
                "| {module} | {name} | {} | {} |",
                params.join(" "),
                results.join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_core_abi_table_matches_the_module_linker() {
    let (tables, rows) = signature_tables(CORE_ABI);
    assert_eq!(
        tables, 1,
        "wit/core-abi.md must have exactly one table headed `| module | name | params | results |`"
    );
    let documented: BTreeSet<Row> = rows.iter().cloned().collect();
    assert_eq!(documented.len(), rows.len(), "a row is listed twice");
    for (module, name, _, _) in &rows {
        assert!(
            MODULES.contains(&module.as_str()),
            "row `{module}::{name}`: the table lists only the modules {MODULES:?}"
        );
    }
    for module in MODULES {
        let linked: BTreeSet<Row> = crate::loader::tests_support::core_imports(module)
            .into_iter()
            .map(|(name, params, results)| {
                let lower = |types: Vec<String>| -> Vec<String> {
                    types.iter().map(|t| t.to_lowercase()).collect()
                };
                (module.to_owned(), name, lower(params), lower(results))
            })
            .collect();
        assert!(
            !linked.is_empty(),
            "the host links nothing under `{module}`"
        );
        let in_doc: BTreeSet<Row> = documented
            .iter()
            .filter(|row| row.0 == module)
            .cloned()
            .collect();
        let missing: BTreeSet<Row> = linked.difference(&in_doc).cloned().collect();
        let stale: BTreeSet<Row> = in_doc.difference(&linked).cloned().collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "wit/core-abi.md disagrees with the host's module linker for `{module}`.\n\
             linked but not documented (or documented with other types):\n{}\n\
             documented but not linked as written:\n{}",
            show(&missing),
            show(&stale)
        );
    }
}

#[test]
fn the_table_parser_reads_rows_and_empty_cells() {
    let doc = "text\n\n| module | name | params | results |\n|---|---|---|---|\n\
               | isola:task | set-output | i32 i32 | |\n| wasi | `thread-spawn` | i32 | I32 |\n\nafter\n\
               | other | table |\n|---|---|\n| a | b |\n";
    let (tables, rows) = signature_tables(doc);
    assert_eq!(tables, 1);
    assert_eq!(
        rows,
        vec![
            (
                "isola:task".to_owned(),
                "set-output".to_owned(),
                vec!["i32".to_owned(), "i32".to_owned()],
                vec![],
            ),
            (
                "wasi".to_owned(),
                "thread-spawn".to_owned(),
                vec!["i32".to_owned()],
                vec!["i32".to_owned()],
            ),
        ]
    );
}
