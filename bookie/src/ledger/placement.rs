//! Ensemble placement: which E bookies store a new segment.
//!
//! Rules, in order: only live bookies (lease not lapsed), none excluded, each at
//! most once; spread over zones as evenly as possible (the zone counts of an
//! ensemble differ by at most one, unless a zone runs out of bookies); within
//! that, most free space first; ties broken by node id, so the choice is
//! deterministic for a given cache state.
//!
//! The ensemble is returned in pick order, which alternates zones, so that
//! with striping (`E > Qw`) consecutive write sets are spread over zones too.

use super::error::LedgerError;
use std::collections::BTreeMap;
use strata_metadata::cache::CachedState;
use strata_proto::metadata::BookieInfo;

/// Chooses `ensemble_size` bookies among `bookies` that are live at `now_ms`
/// and not in `exclude` (node ids, e.g. the bookies a writer just dropped).
pub fn choose_ensemble<'a>(
    bookies: impl IntoIterator<Item = &'a BookieInfo>,
    now_ms: u64,
    ensemble_size: usize,
    exclude: &[i32],
) -> Result<Vec<BookieInfo>, LedgerError> {
    // Zone → its candidates, best first. A node id seen twice counts once.
    let mut zones: BTreeMap<&str, Vec<&BookieInfo>> = BTreeMap::new();
    let mut seen = Vec::new();
    for bookie in bookies {
        if bookie.lease_expires_ms <= now_ms
            || exclude.contains(&bookie.node_id)
            || bookie.grpc_addr.is_empty()
            || seen.contains(&bookie.node_id)
        {
            continue;
        }
        seen.push(bookie.node_id);
        zones.entry(bookie.zone.as_str()).or_default().push(bookie);
    }
    let available = seen.len();
    if ensemble_size == 0 || available < ensemble_size {
        return Err(LedgerError::NotEnoughBookies {
            needed: ensemble_size,
            available,
        });
    }
    for candidates in zones.values_mut() {
        candidates.sort_by(|a, b| {
            b.free_bytes
                .cmp(&a.free_bytes)
                .then(a.node_id.cmp(&b.node_id))
        });
        // Pop from the back: best last.
        candidates.reverse();
    }
    let mut picked_per_zone: BTreeMap<&str, usize> = zones.keys().map(|z| (*z, 0)).collect();
    let mut ensemble = Vec::with_capacity(ensemble_size);
    while ensemble.len() < ensemble_size {
        // The zone with the fewest picks so far; among those, the one whose best
        // remaining bookie has the most free space; then by zone name.
        let zone = zones
            .iter()
            .filter_map(|(zone, candidates)| candidates.last().map(|best| (*zone, *best)))
            .min_by(|(zone_a, a), (zone_b, b)| {
                picked_per_zone[zone_a]
                    .cmp(&picked_per_zone[zone_b])
                    .then(b.free_bytes.cmp(&a.free_bytes))
                    .then(a.node_id.cmp(&b.node_id))
            })
            .map(|(zone, _)| zone);
        let Some(zone) = zone else {
            // Unreachable: `available >= ensemble_size` candidates were queued.
            break;
        };
        if let Some(bookie) = zones.get_mut(zone).and_then(Vec::pop) {
            ensemble.push(bookie.clone());
            *picked_per_zone.entry(zone).or_default() += 1;
        }
    }
    debug_assert_eq!(ensemble.len(), ensemble_size);
    Ok(ensemble)
}

/// [`choose_ensemble`] over the bookies of a cluster cache.
pub fn choose_ensemble_from_cache(
    state: &CachedState,
    now_ms: u64,
    ensemble_size: usize,
    exclude: &[i32],
) -> Result<Vec<BookieInfo>, LedgerError> {
    choose_ensemble(state.bookies.values(), now_ms, ensemble_size, exclude)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000;

    fn bookie(node_id: i32, zone: &str, free_bytes: u64) -> BookieInfo {
        BookieInfo {
            node_id,
            grpc_addr: format!("127.0.0.1:{}", 7000 + node_id),
            zone: zone.into(),
            free_bytes,
            lease_expires_ms: NOW + 10,
        }
    }

    fn ids(ensemble: &[BookieInfo]) -> Vec<i32> {
        ensemble.iter().map(|b| b.node_id).collect()
    }

    fn zone_counts(ensemble: &[BookieInfo]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for b in ensemble {
            *counts.entry(b.zone.clone()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn spreads_over_zones_before_preferring_free_space() {
        // Zone a has the three emptiest bookies, but an ensemble of 3 takes one per zone.
        let bookies = vec![
            bookie(1, "a", 900),
            bookie(2, "a", 800),
            bookie(3, "a", 700),
            bookie(4, "b", 100),
            bookie(5, "b", 200),
            bookie(6, "c", 50),
        ];
        let ensemble = choose_ensemble(&bookies, NOW, 3, &[]).unwrap();
        assert_eq!(ids(&ensemble), vec![1, 5, 6]);
        // Five bookies over three zones: 2, 2, 1.
        let ensemble = choose_ensemble(&bookies, NOW, 5, &[]).unwrap();
        let counts: Vec<usize> = zone_counts(&ensemble).into_values().collect();
        assert_eq!(counts, vec![2, 2, 1]);
        assert_eq!(ids(&ensemble), vec![1, 5, 6, 2, 4]);
    }

    #[test]
    fn a_zone_that_runs_out_leaves_the_rest_to_others() {
        let bookies = vec![
            bookie(1, "a", 10),
            bookie(2, "b", 10),
            bookie(3, "b", 10),
            bookie(4, "b", 10),
        ];
        let ensemble = choose_ensemble(&bookies, NOW, 4, &[]).unwrap();
        assert_eq!(ids(&ensemble), vec![1, 2, 3, 4]);
    }

    #[test]
    fn prefers_free_space_with_node_id_tie_break() {
        let bookies = vec![
            bookie(4, "", 500),
            bookie(3, "", 500),
            bookie(2, "", 100),
            bookie(1, "", 900),
        ];
        let ensemble = choose_ensemble(&bookies, NOW, 3, &[]).unwrap();
        assert_eq!(ids(&ensemble), vec![1, 3, 4]);
        // Same input in another order: same ensemble.
        let mut reversed = bookies.clone();
        reversed.reverse();
        assert_eq!(
            ids(&choose_ensemble(&reversed, NOW, 3, &[]).unwrap()),
            vec![1, 3, 4]
        );
    }

    #[test]
    fn skips_dead_excluded_and_duplicate_bookies() {
        let mut dead = bookie(1, "a", 1_000);
        dead.lease_expires_ms = NOW;
        let bookies = vec![
            dead,
            bookie(2, "a", 10),
            bookie(2, "a", 10),
            bookie(3, "b", 10),
            bookie(4, "c", 10),
        ];
        let ensemble = choose_ensemble(&bookies, NOW, 2, &[4]).unwrap();
        assert_eq!(ids(&ensemble), vec![2, 3]);
        let error = choose_ensemble(&bookies, NOW, 3, &[4]).unwrap_err();
        assert_eq!(
            error,
            LedgerError::NotEnoughBookies {
                needed: 3,
                available: 2
            }
        );
        assert!(error.to_string().contains("only 2 live bookies"));
    }

    #[test]
    fn never_places_two_replicas_on_one_bookie() {
        let bookies: Vec<BookieInfo> = (1..=9)
            .map(|i| bookie(i, ["x", "y", "z"][i as usize % 3], (i as u64 * 37) % 11))
            .collect();
        for size in 1..=9 {
            let ensemble = choose_ensemble(&bookies, NOW, size, &[]).unwrap();
            let mut unique = ids(&ensemble);
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), size);
            let counts = zone_counts(&ensemble);
            let (min, max) = (counts.values().min(), counts.values().max());
            assert!(max.unwrap() - min.unwrap() <= 1, "uneven zones {counts:?}");
        }
    }
}
