//! Groups a step's input files into batches of bounded size. Pure: sizes in, groups out.
//!
//! Files keep their order; a batch closes when the next file would take it over the byte
//! limit or the file limit, and a file larger than the byte limit is a batch of its own
//! (it still converts in bounded memory: the limit bounds a batch's run time and retry
//! cost, not memory). The file limit spreads many small files over the batch slots.

/// Indices of `sizes`, grouped into batches of at most `max_bytes` and `max_files` each.
pub fn plan(sizes: &[u64], max_bytes: u64, max_files: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0u64;
    for (i, &s) in sizes.iter().enumerate() {
        if !current.is_empty() && (bytes.saturating_add(s) > max_bytes || current.len() >= max_files) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes = bytes.saturating_add(s);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn batches_stay_under_the_limit_and_keep_order() {
        assert_eq!(plan(&[4, 4, 4, 9, 1], 10, 100), vec![vec![0, 1], vec![2], vec![3, 4]]);
        assert_eq!(plan(&[25, 1], 10, 100), vec![vec![0], vec![1]]);
        assert_eq!(plan(&[], 10, 100), Vec::<Vec<usize>>::new());
        assert_eq!(plan(&[0; 3], 10, 100), vec![vec![0, 1, 2]]);
        assert_eq!(plan(&[1; 5], 100, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
    }
}
