//! `strata admin segments under-replicated [--json]`: the sealed segments
//! whose ensemble holds a dead bookie (its lease has lapsed), which bookies'
//! auto-recovery is re-replicating. The list is empty once recovery is done.

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use strata_metadata::client::MetadataClient;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{ListUnderReplicatedSegmentsRequest, UnderReplicatedSegment};

/// Segment operations.
#[derive(Debug, Subcommand)]
pub enum SegmentsCommand {
    /// List sealed segments that lost a replica with a dead bookie (auto-recovery
    /// copies them to live bookies; the list is empty once it is done).
    UnderReplicated {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Most segments to list, lowest ids first (0: all); the total is always counted.
        #[arg(long, default_value_t = 1_000)]
        limit: u32,
    },
}

/// The report, as printed.
#[derive(Debug, Serialize, PartialEq)]
struct Report {
    /// How many segments are under-replicated, listed or not.
    under_replicated: u64,
    /// The first of them (up to the limit), by segment id.
    segments: Vec<SegmentRow>,
}

/// One under-replicated segment.
#[derive(Debug, Serialize, PartialEq)]
struct SegmentRow {
    topic: String,
    partition: u32,
    segment_id: u64,
    base_offset: i64,
    /// Exclusive.
    end_offset: Option<i64>,
    /// Bookie node ids, in ensemble order.
    ensemble: Vec<i32>,
    /// The ensemble's bookies that are dead.
    dead_bookies: Vec<i32>,
}

/// Runs one segments operation.
pub async fn run(command: SegmentsCommand, client: &MetadataClient) -> anyhow::Result<()> {
    match command {
        SegmentsCommand::UnderReplicated { json, limit } => {
            let request = ListUnderReplicatedSegmentsRequest {
                dead_for_ms: 0,
                limit,
            };
            let listed = client
                .call(|mut c| async move { c.list_under_replicated_segments(request).await })
                .await
                .with_context(|| {
                    format!("cannot reach metadata at {}", client.addrs().join(","))
                })?;
            let report = report(&listed.segments, listed.total);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render(&report));
            }
            Ok(())
        }
    }
}

fn report(segments: &[UnderReplicatedSegment], total: u64) -> Report {
    let segments: Vec<SegmentRow> = segments
        .iter()
        .filter_map(|reported| {
            let segment = reported.segment.as_ref()?;
            let end_offset = match &segment.state {
                Some(State::Sealed(sealed)) => Some(sealed.end_offset),
                _ => None,
            };
            Some(SegmentRow {
                topic: segment.topic.clone(),
                partition: segment.partition,
                segment_id: segment.segment_id,
                base_offset: segment.base_offset,
                end_offset,
                ensemble: segment.ensemble.clone(),
                dead_bookies: reported.dead_bookies.clone(),
            })
        })
        .collect();
    Report {
        under_replicated: total.max(segments.len() as u64),
        segments,
    }
}

fn ids(ids: &[i32]) -> String {
    let ids: Vec<String> = ids.iter().map(i32::to_string).collect();
    ids.join(",")
}

fn render(report: &Report) -> String {
    if report.under_replicated == 0 {
        return "no under-replicated segments\n".to_string();
    }
    let mut out = format!(
        "{:<24} {:>9} {:>10} {:>12} {:>12}  {:<12} {}\n",
        "TOPIC", "PARTITION", "SEGMENT", "BASE", "END", "ENSEMBLE", "DEAD BOOKIES"
    );
    for row in &report.segments {
        let end = row
            .end_offset
            .map_or_else(|| "-".to_string(), |end| end.to_string());
        out.push_str(&format!(
            "{:<24} {:>9} {:>10} {:>12} {:>12}  {:<12} {}\n",
            row.topic,
            row.partition,
            row.segment_id,
            row.base_offset,
            end,
            ids(&row.ensemble),
            ids(&row.dead_bookies)
        ));
    }
    let shown = report.segments.len() as u64;
    if shown < report.under_replicated {
        out.push_str(&format!(
            "{} under-replicated segments, the first {shown} shown\n",
            report.under_replicated
        ));
    } else {
        out.push_str(&format!(
            "{} under-replicated segments\n",
            report.under_replicated
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::{SegmentInfo, SegmentSealed};

    fn reported(segment_id: u64, dead: Vec<i32>) -> UnderReplicatedSegment {
        UnderReplicatedSegment {
            segment: Some(SegmentInfo {
                segment_id,
                topic: "orders".into(),
                partition: 2,
                ensemble: vec![1, 2, 3],
                write_quorum: 3,
                ack_quorum: 2,
                base_offset: 100,
                writer_epoch: 1,
                replaced_bookies: Vec::new(),
                state: Some(State::Sealed(SegmentSealed {
                    end_offset: 250,
                    bytes: 4096,
                    max_timestamp: None,
                })),
            }),
            dead_bookies: dead,
        }
    }

    #[test]
    fn an_empty_report_says_so() {
        let report = report(&[], 0);
        assert_eq!(report.under_replicated, 0);
        assert_eq!(render(&report), "no under-replicated segments\n");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["segments"], serde_json::json!([]));
    }

    #[test]
    fn rows_name_the_segment_and_its_dead_bookies() {
        let report = report(&[reported(7, vec![2]), reported(9, vec![1, 3])], 2);
        let text = render(&report);
        assert!(text.starts_with("TOPIC"), "{text}");
        assert!(text.contains("orders"), "{text}");
        assert!(text.contains("1,2,3"), "{text}");
        assert!(text.ends_with("2 under-replicated segments\n"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["under_replicated"], 2);
        assert_eq!(
            json["segments"][1]["dead_bookies"],
            serde_json::json!([1, 3])
        );
        assert_eq!(json["segments"][0]["end_offset"], 250);
    }

    #[test]
    fn a_limited_report_says_how_many_are_left_out() {
        let report = report(&[reported(7, vec![2])], 5);
        assert_eq!(report.under_replicated, 5);
        let text = render(&report);
        assert!(
            text.ends_with("5 under-replicated segments, the first 1 shown\n"),
            "{text}"
        );
    }
}
