//! Multi-objective ranking: non-dominated sorting and crowding distance
//! (NSGA-II's order), all objectives minimised.

/// A point's place: its front (0 = non-dominated) and crowding distance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    /// Front index, 0 best.
    pub rank: usize,
    /// Crowding distance within the front (larger is better; infinite at the ends).
    pub crowding: f64,
}

/// Whether `a` is preferred over `b`: lower rank, then larger crowding.
pub fn better(a: &Standing, b: &Standing) -> bool {
    a.rank < b.rank || (a.rank == b.rank && a.crowding > b.crowding)
}

/// Whether `a` dominates `b` (no worse anywhere, better somewhere).
pub fn dominates<const K: usize>(a: &[f64; K], b: &[f64; K]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
}

/// The standing of every point.
pub fn rank_and_crowd<const K: usize>(points: &[[f64; K]]) -> Vec<Standing> {
    let n = points.len();
    let mut dominated_by = vec![0usize; n];
    let mut dominates_list: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in 0..n {
            if i != j && dominates(&points[i], &points[j]) {
                dominates_list[i].push(j);
                dominated_by[j] += 1;
            }
        }
    }
    let mut out = vec![
        Standing {
            rank: 0,
            crowding: 0.0
        };
        n
    ];
    let mut front: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    let mut rank = 0;
    while !front.is_empty() {
        crowd(points, &front, &mut out);
        let mut next = Vec::new();
        for &i in &front {
            out[i].rank = rank;
            for &j in &dominates_list[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        front = next;
        rank += 1;
    }
    out
}

fn crowd<const K: usize>(points: &[[f64; K]], front: &[usize], out: &mut [Standing]) {
    for &i in front {
        out[i].crowding = 0.0;
    }
    #[allow(clippy::needless_range_loop)] // k indexes the objective inside each point
    for k in 0..K {
        let mut idx = front.to_vec();
        idx.sort_by(|&a, &b| points[a][k].total_cmp(&points[b][k]));
        let (lo, hi) = (points[idx[0]][k], points[idx[idx.len() - 1]][k]);
        out[idx[0]].crowding = f64::INFINITY;
        out[idx[idx.len() - 1]].crowding = f64::INFINITY;
        if hi > lo {
            for w in 1..idx.len().saturating_sub(1) {
                let gap = (points[idx[w + 1]][k] - points[idx[w - 1]][k]) / (hi - lo);
                out[idx[w]].crowding += gap;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fronts_and_ends() {
        let p = [
            [0.0, 3.0],
            [1.0, 1.0],
            [3.0, 0.0],
            [2.0, 2.0], // dominated by [1, 1]
            [3.0, 3.0], // dominated by [2, 2]
        ];
        let s = rank_and_crowd(&p);
        let ranks: Vec<usize> = s.iter().map(|x| x.rank).collect();
        assert_eq!(ranks, [0, 0, 0, 1, 2]);
        assert!(s[0].crowding.is_infinite() && s[2].crowding.is_infinite());
        assert!(s[1].crowding.is_finite() && s[1].crowding > 0.0);
        assert!(better(&s[1], &s[3]) && better(&s[0], &s[1]));
    }

    proptest! {
        #[test]
        fn no_point_is_dominated_by_one_of_its_own_or_a_later_front(
            pts in proptest::collection::vec((0u8..6, 0u8..6, 0u8..6), 1..40)
        ) {
            let p: Vec<[f64; 3]> = pts.iter().map(|&(a, b, c)| [a as f64, b as f64, c as f64]).collect();
            let s = rank_and_crowd(&p);
            for i in 0..p.len() {
                for j in 0..p.len() {
                    if dominates(&p[i], &p[j]) {
                        prop_assert!(s[i].rank < s[j].rank);
                    }
                }
                // Every point beyond front 0 is dominated by one in the previous front.
                if s[i].rank > 0 {
                    prop_assert!((0..p.len()).any(|j| s[j].rank == s[i].rank - 1 && dominates(&p[j], &p[i])));
                }
            }
        }
    }
}
