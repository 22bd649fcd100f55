//! Checks on the set as a whole: task names, and the dependency graph.
//! Shared by the TOML loader (which has positions) and [`super::TaskSet::new`]
//! (which has none).

use std::collections::HashMap;

use super::ConfigErrorKind;

/// A problem with one task's name or one entry of its `depends_on`.
pub(crate) struct Problem {
    /// The task, by position in the set.
    pub task: usize,
    /// The `depends_on` entry, or `None` for a problem with the name.
    pub dep: Option<usize>,
    pub kind: ConfigErrorKind,
    pub message: String,
}

/// Whether `name` is a valid task name: letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit. Names are output prefixes and JSON keys,
/// so they are kept plain.
pub(crate) fn name_problem(name: &str) -> Option<String> {
    const MAX: usize = 64;
    if name.is_empty() {
        return Some("a task name must not be empty".into());
    }
    if name.chars().count() > MAX {
        return Some(format!("a task name has at most {MAX} characters"));
    }
    let valid = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    (!valid).then(|| {
        format!(
            "`{name}` is not a valid task name: use letters, digits, `-`, `_` and `.`, \
             starting with a letter or digit"
        )
    })
}

/// Duplicate names, unknown dependencies and cycles. `names[i]` is `None`
/// when task `i` has no valid name (already reported); `deps[i]` lists the
/// names task `i` depends on.
pub(crate) fn check(names: &[Option<&str>], deps: &[Vec<&str>]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (task, name) in names.iter().enumerate() {
        let Some(name) = name else { continue };
        if let Some(&first) = index.get(name) {
            problems.push(Problem {
                task,
                dep: None,
                kind: ConfigErrorKind::DuplicateName,
                message: format!(
                    "the name `{name}` is already used by task #{}; task names must be unique",
                    first + 1
                ),
            });
        } else {
            index.insert(name, task);
        }
    }

    // Edges that resolve to a task; unknown names are reported and left out,
    // so one typo does not also show up as a cycle.
    let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); names.len()];
    for (task, list) in deps.iter().enumerate() {
        for (dep, &target) in list.iter().enumerate() {
            match index.get(target) {
                Some(&to) if to == task => problems.push(Problem {
                    task,
                    dep: Some(dep),
                    kind: ConfigErrorKind::Cycle,
                    message: "a task cannot depend on itself".into(),
                }),
                Some(&to) => edges[task].push((dep, to)),
                None => {
                    let known = names.iter().flatten().copied();
                    let hint = super::parse::suggest(target, known)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    problems.push(Problem {
                        task,
                        dep: Some(dep),
                        kind: ConfigErrorKind::UnknownDependency,
                        message: format!("no task is named `{target}`{hint}"),
                    });
                }
            }
        }
    }

    // Depth-first search in config order; each back edge closes one cycle,
    // reported at the `depends_on` entry that closes it.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; names.len()];
    let label = |t: usize| names[t].map_or_else(|| format!("#{}", t + 1), str::to_owned);
    for root in 0..names.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // Iterative, so a long dependency chain cannot overflow the stack.
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::Active;
        while let Some(top) = stack.last_mut() {
            let task = top.0;
            let Some(&(dep, to)) = edges[task].get(top.1) else {
                marks[task] = Mark::Done;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match marks[to] {
                Mark::New => {
                    marks[to] = Mark::Active;
                    stack.push((to, 0));
                }
                Mark::Active => {
                    let start = stack.iter().position(|&(t, _)| t == to).unwrap_or(0);
                    let mut path: Vec<String> =
                        stack[start..].iter().map(|&(t, _)| label(t)).collect();
                    path.push(label(to));
                    problems.push(Problem {
                        task,
                        dep: Some(dep),
                        kind: ConfigErrorKind::Cycle,
                        message: format!("dependency cycle: {}", path.join(" -> ")),
                    });
                }
                Mark::Done => {}
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(names: &[&str], deps: &[&[&str]]) -> Vec<String> {
        let names: Vec<Option<&str>> = names.iter().map(|n| Some(*n)).collect();
        let deps: Vec<Vec<&str>> = deps.iter().map(|d| d.to_vec()).collect();
        check(&names, &deps)
            .into_iter()
            .map(|p| format!("{}:{:?}: {}", p.task, p.dep, p.message))
            .collect()
    }

    #[test]
    fn cycles_are_found_once_with_their_path() {
        assert_eq!(
            messages(&["a", "b", "c"], &[&["b"], &["c"], &["a"]]),
            ["2:Some(0): dependency cycle: a -> b -> c -> a"]
        );
        // A diamond is not a cycle.
        assert!(messages(&["a", "b", "c", "d"], &[&[], &["a"], &["a"], &["b", "c"]]).is_empty());
        assert_eq!(
            messages(&["a"], &[&["a"]]),
            ["0:Some(0): a task cannot depend on itself"]
        );
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let names: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
        let name_refs: Vec<Option<&str>> = names.iter().map(|n| Some(n.as_str())).collect();
        let mut deps: Vec<Vec<&str>> = (0..names.len())
            .map(|i| {
                if i == 0 {
                    vec![]
                } else {
                    vec![names[i - 1].as_str()]
                }
            })
            .collect();
        assert!(check(&name_refs, &deps).is_empty());
        deps[0] = vec![names[names.len() - 1].as_str()];
        let problems = check(&name_refs, &deps);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, ConfigErrorKind::Cycle);
    }

    #[test]
    fn names_are_plain() {
        assert!(name_problem("build-1.x_y").is_none());
        for bad in ["", "-x", "a b", "é", "a|b", &"x".repeat(65)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
