//! Where a stream stands in its sinks. Every flush lands the records of one partition's
//! range as one input named by that range (`kafka://<topic>/p<partition>_<first>-<last>`),
//! so a replay after a crash reproduces the same input — replacing its rows, never adding
//! them — and the ranges a sink holds say where to resume: after the highest landed
//! position, whatever the broker's committed offset says.

use std::collections::BTreeMap;
use std::path::Path;

use weir_core::dataset::SinkSpec;
use weir_data::sink::input_key;
use weir_data::sink::local::LocalDataset;
use weir_data::DataError;

/// A partition of a topic.
pub type Partition = (String, i32);

/// The input identity of a landed range (first and last offsets included).
pub fn identity(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("kafka://{topic}/p{partition}_{first}-{last}")
}

/// The range a sink input key holds, if it is one of `partitions`' ranges: the key's stem
/// carries `p<partition>_<first>-<last>`, and the whole key must be that identity's.
pub fn range_of(key: &str, partitions: &[Partition]) -> Option<(Partition, i64, i64)> {
    let rest = key.strip_prefix('p')?;
    let (p, rest) = rest.split_once('_')?;
    let mut parts = rest.splitn(3, '-');
    let (first, last) = (parts.next()?.parse::<i64>().ok()?, parts.next()?.parse::<i64>().ok()?);
    let partition: i32 = p.parse().ok()?;
    partitions
        .iter()
        .find(|(t, q)| *q == partition && input_key(&identity(t, partition, first, last)) == key)
        .map(|tp| (tp.clone(), first, last))
}

/// The highest landed position per partition in the step's local Parquet sinks (other
/// sinks keep none yet).
pub fn landed(sinks: &[SinkSpec], partitions: &[Partition]) -> Result<BTreeMap<Partition, i64>, DataError> {
    let mut out: BTreeMap<Partition, i64> = BTreeMap::new();
    for s in sinks {
        let SinkSpec::Parquet { path, location: None, .. } = s else { continue };
        for k in LocalDataset::new(Path::new(path)).input_keys()? {
            if let Some((tp, _, last)) = range_of(&k, partitions) {
                let e = out.entry(tp).or_insert(last);
                *e = (*e).max(last);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_landed_ranges_key_says_its_partition_and_positions_and_no_other_topics() {
        let parts = vec![("orders".to_string(), 0), ("orders".to_string(), 2), ("orders_eu".to_string(), 2)];
        let k = input_key(&identity("orders", 2, 100, 199));
        assert_eq!(range_of(&k, &parts), Some((("orders".to_string(), 2), 100, 199)));
        let eu = input_key(&identity("orders_eu", 2, 5, 9));
        assert_eq!(range_of(&eu, &parts).map(|r| r.0 .0), Some("orders_eu".to_string()));
        assert_eq!(range_of(&input_key(&identity("other", 2, 1, 2)), &parts), None);
        assert_eq!(range_of("p2_1-2-ffffffffffff", &parts), None, "a key that is not the identity's");
        assert_eq!(range_of("trades-0a1b2c3d4e5f", &parts), None);
    }
}
