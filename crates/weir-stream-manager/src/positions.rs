//! Where a stream stands in its sinks. Every flush lands the records of one lane's range
//! as one input named by that range (`kafka://<topic>/p<partition>_<first>-<last>`), so a
//! replay after a crash reproduces the same input — replacing its rows, never adding
//! them — and the ranges a sink holds say where to resume: after the highest landed
//! position, whatever the broker's committed offset says. A PostgreSQL table records its
//! input keys in the same transaction as the rows, a local dataset in its manifests.

use std::collections::BTreeMap;

use weir_data::sink::input_key;

use crate::source::Lane;

/// The input identity of a landed range (first and last positions included).
pub fn identity(scheme: &str, name: &str, index: i32, first: i64, last: i64) -> String {
    format!("{scheme}://{name}/p{index}_{first}-{last}")
}

/// The input identity of a range of a source whose positions do not replay (delivery
/// tags, a count): named by the lease too, since another lease counts from 1 again.
pub fn leased_identity(scheme: &str, name: &str, lease: &str, index: i32, first: i64, last: i64) -> String {
    format!("{scheme}://{name}/{lease}/p{index}_{first}-{last}")
}

/// The range a sink input key holds, if it is one of `lanes`' ranges: the key's stem
/// carries `p<index>_<first>-<last>`, and the whole key must be that identity's.
pub fn range_of(scheme: &str, key: &str, lanes: &[Lane]) -> Option<(usize, i64, i64)> {
    let rest = key.strip_prefix('p')?;
    let (p, rest) = rest.split_once('_')?;
    let mut parts = rest.splitn(3, '-');
    let (first, last) = (parts.next()?.parse::<i64>().ok()?, parts.next()?.parse::<i64>().ok()?);
    let index: i32 = p.parse().ok()?;
    lanes
        .iter()
        .position(|l| l.index == index && input_key(&identity(scheme, &l.name, index, first, last)) == key)
        .map(|lane| (lane, first, last))
}

/// The highest landed position per lane over every sink's input keys.
pub fn landed(scheme: &str, keys: &[Vec<String>], lanes: &[Lane]) -> BTreeMap<usize, i64> {
    let mut out: BTreeMap<usize, i64> = BTreeMap::new();
    for k in keys.iter().flatten() {
        if let Some((lane, _, last)) = range_of(scheme, k, lanes) {
            let e = out.entry(lane).or_insert(last);
            *e = (*e).max(last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str, index: i32) -> Lane {
        Lane { name: name.into(), index }
    }

    #[test]
    fn a_landed_ranges_key_says_its_lane_and_positions_and_no_other_topics() {
        let lanes = vec![lane("orders", 0), lane("orders", 2), lane("orders_eu", 2)];
        let k = input_key(&identity("kafka", "orders", 2, 100, 199));
        assert_eq!(range_of("kafka", &k, &lanes), Some((1, 100, 199)));
        let eu = input_key(&identity("kafka", "orders_eu", 2, 5, 9));
        assert_eq!(range_of("kafka", &eu, &lanes).map(|r| r.0), Some(2));
        assert_eq!(range_of("nats", &k, &lanes), None, "another source's ranges");
        assert_eq!(range_of("kafka", &input_key(&identity("kafka", "other", 2, 1, 2)), &lanes), None);
        assert_eq!(range_of("kafka", "p2_1-2-ffffffffffff", &lanes), None, "a key that is not the identity's");
        assert_eq!(range_of("kafka", "trades-0a1b2c3d4e5f", &lanes), None);
        let keys = vec![vec![k.clone(), input_key(&identity("kafka", "orders", 2, 200, 249))], vec![eu]];
        assert_eq!(landed("kafka", &keys, &lanes), BTreeMap::from([(1, 249), (2, 9)]));
    }
}
