//! Comma-separated pattern lists, as written in `?channels=` and CLI flags.

/// Splits a comma-separated pattern list, keeping the commas inside `{a,b}`
/// alternations, trimming spaces and dropping empty entries.
pub fn split_list(list: &str) -> Vec<&str> {
    let mut depth = 0usize;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_list;

    #[test]
    fn splits_on_commas_outside_braces() {
        assert_eq!(
            split_list("session:*,region:{eu,us}:*, task:**,"),
            vec!["session:*", "region:{eu,us}:*", "task:**"]
        );
        assert!(split_list("").is_empty());
    }
}
