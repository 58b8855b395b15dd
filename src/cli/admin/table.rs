//! Plain-text tables for admin output: left-aligned columns as wide as
//! their widest cell.

/// `rows` under `header` in left-aligned columns separated by `gap`, each
/// line after `indent` and ending in a newline (trailing spaces trimmed).
pub fn table(header: &[&str], rows: &[Vec<String>], indent: &str, gap: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{indent}{}\n", padded.join(gap).trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["orders".to_string(), "3".to_string(), "x".to_string()],
            vec!["a".to_string(), "12345".to_string(), String::new()],
        ];
        assert_eq!(
            table(&["NAME", "N", "NOTE"], &rows, "  ", " "),
            "  NAME   N     NOTE\n  orders 3     x\n  a      12345\n"
        );
    }
}
