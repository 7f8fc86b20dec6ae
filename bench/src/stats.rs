//! Small statistics for noisy measurements.

/// Median (mean of the two middle values for an even count); None when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// a / b, None when b is not a positive number.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Relative spread of a sample: (max - min) / median.
pub fn spread(xs: &[f64]) -> Option<f64> {
    let m = median(xs)?;
    let max = xs.iter().copied().fold(f64::MIN, f64::max);
    let min = xs.iter().copied().fold(f64::MAX, f64::min);
    (m > 0.0).then(|| (max - min) / m)
}

/// Rotate `items` left by `round`: round-robin order so no setup always
/// runs first (or right after the same neighbour) in every round.
pub fn rotated<T: Clone>(items: &[T], round: usize) -> Vec<T> {
    if items.is_empty() {
        return Vec::new();
    }
    let k = round % items.len();
    items[k..].iter().chain(&items[..k]).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn ratios_and_spread() {
        assert_eq!(ratio(Some(97.0), Some(100.0)), Some(0.97));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(spread(&[90.0, 100.0, 110.0]), Some(0.2));
    }

    #[test]
    fn rotation_visits_every_position() {
        let s = ["a", "b", "c"];
        assert_eq!(rotated(&s, 0), ["a", "b", "c"]);
        assert_eq!(rotated(&s, 1), ["b", "c", "a"]);
        assert_eq!(rotated(&s, 5), ["c", "a", "b"]);
    }
}
