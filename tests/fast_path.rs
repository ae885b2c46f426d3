//! The fast reader (`src/promql/fast.rs`) against the chumsky grammar: wherever the fast
//! reader builds a tree, the grammar must build the same one (same nodes, same spans),
//! so everything after the parse, and so the rewrite's output, is the same byte for byte.
//!
//! Run over every corpus record (`../shared/corpus`, read in place) and over edited
//! versions of them (cut short, a token dropped or doubled, brackets swapped), where a
//! reader that accepts too much would show. The generated queries of
//! `tests/proptest_engine.rs` are compared there.

mod common;

use promql_tenant_filter::promql::__fast_path_agrees;

/// Checks one query; returns whether the fast reader took it.
fn agrees(query: &str, failures: &mut Vec<String>) -> bool {
    match __fast_path_agrees(query) {
        None => false,
        Some(Ok(())) => true,
        Some(Err(why)) => {
            if failures.len() < 10 {
                failures.push(format!("{query:?}\n    {why}"));
            }
            true
        }
    }
}

#[test]
fn the_fast_reader_builds_the_grammars_tree_on_the_corpus() {
    let records = common::load_corpus();
    let mut failures = Vec::new();
    let mut taken = 0;
    for (_, record) in &records {
        taken += usize::from(agrees(&record.expr, &mut failures));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    common::report(&format!(
        "fast reader: took {taken} of {} corpus records, each the grammar's tree",
        records.len()
    ));
    // The reader must earn its place: if it stopped taking the common shapes, this test
    // would still pass on agreement alone, so its share is checked too.
    assert!(
        taken * 10 >= records.len() * 9,
        "the fast reader took only {taken} of {} records",
        records.len()
    );
}

#[test]
fn the_fast_reader_builds_the_grammars_tree_on_edited_queries() {
    let records = common::load_corpus();
    let mut failures = Vec::new();
    let mut tried = 0;
    for (_, record) in records.iter().step_by(7) {
        let q = &record.expr;
        // Cut at each char boundary, up to 60 cuts a query.
        let cuts: Vec<usize> = (1..q.len())
            .filter(|i| q.is_char_boundary(*i))
            .step_by((q.len() / 60).max(1))
            .collect();
        for &i in &cuts {
            agrees(&q[..i], &mut failures);
            tried += 1;
        }
        for (from, to) in [
            ("(", "["),
            ("]", ")"),
            ("}", ""),
            ("{", "("),
            (",", ""),
            ("=", ""),
            ("\"", ""),
            (")", "),"),
            ("[5m]", "[5m] anchored"),
            ("[", "[1m:"),
            ("by", "on"),
            (" ", " offset "),
            (" ", " @ "),
            (" ", " bool "),
            ("(", "(-"),
            (")", ") by (x)"),
            ("=", "=="),
            ("~", ""),
        ] {
            for (at, _) in q.match_indices(from).take(8) {
                let edited = format!("{}{to}{}", &q[..at], &q[at + from.len()..]);
                agrees(&edited, &mut failures);
                tried += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    common::report(&format!(
        "fast reader: {tried} edited queries, the grammar's tree wherever the reader took one"
    ));
}
