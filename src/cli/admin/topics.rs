//! `strata admin topics describe`: a topic as metadata knows it — its configs,
//! and per partition its owner, log start and live segments, showing which
//! tier (bookies or object storage) holds each one.

use super::check;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::BTreeMap;
use strata_metadata::client::MetadataClient;
use strata_proto::metadata::segment_info::State;
use strata_proto::metadata::{
    GetClusterRequest, ListPartitionsRequest, ListSegmentsRequest, ListTopicsRequest,
    PartitionInfo, SegmentInfo, TopicInfo,
};

/// What `PartitionInfo.owner` holds when no gateway owns the partition.
const NO_OWNER: i32 = -1;
/// Shown in a table cell whose value is not known (yet).
const UNKNOWN: &str = "-";
/// Tier names as printed.
const TIER_BOOKIES: &str = "bookies";
const TIER_OBJECT_STORAGE: &str = "object storage";

/// A topic with its partitions and their live segments.
#[derive(Debug, Serialize)]
struct TopicDescription {
    name: String,
    topic_id: String,
    partition_count: u32,
    configs: BTreeMap<String, String>,
    partitions: Vec<PartitionDescription>,
}

/// One partition: who serves it, where its log starts, what holds its records.
#[derive(Debug, Serialize)]
struct PartitionDescription {
    partition: u32,
    /// The owning gateway's node id; `None` when nobody owns the partition.
    owner: Option<i32>,
    /// The owning gateway's Kafka listener, when metadata knows the gateway.
    owner_address: Option<String>,
    /// Whether the owning gateway's lease is current.
    owner_live: Option<bool>,
    leader_epoch: u32,
    /// The larger of the partition's log start offset and its first live
    /// segment's base offset: the first offset a consumer can read.
    log_start_offset: i64,
    /// Live segments in log order.
    segments: Vec<SegmentDescription>,
}

/// One live segment of a partition.
#[derive(Debug, Serialize)]
struct SegmentDescription {
    segment_id: u64,
    /// [`TIER_BOOKIES`] or [`TIER_OBJECT_STORAGE`].
    tier: &'static str,
    /// `open`, `sealed` or `offloaded`.
    state: &'static str,
    base_offset: i64,
    /// Exclusive; `None` while the segment is open.
    end_offset: Option<i64>,
    /// Record bytes; `None` while the segment is open.
    bytes: Option<u64>,
    /// Bookie node ids holding the segment, for segments on bookies.
    #[serde(skip_serializing_if = "Option::is_none")]
    ensemble: Option<Vec<i32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_quorum: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_quorum: Option<u32>,
    /// Where an offloaded segment lives in object storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    object_key: Option<String>,
    /// Size of the offloaded object (records, index and trailer).
    #[serde(skip_serializing_if = "Option::is_none")]
    object_bytes: Option<u64>,
    /// Largest record timestamp (ms since the epoch), when its writer knew it.
    max_timestamp: Option<i64>,
}

/// A registered gateway as the describe output names it.
struct Gateway {
    address: String,
    live: bool,
}

/// `topics describe NAME [--json]`: reads the topic, its partitions, the
/// gateways and every partition's segments from metadata and prints them.
pub async fn describe(client: &MetadataClient, name: &str, json: bool) -> anyhow::Result<()> {
    let unreachable = || format!("cannot reach metadata at {}", client.addrs().join(","));
    let topics = client
        .call(|mut c| async move { c.list_topics(ListTopicsRequest {}).await })
        .await
        .with_context(unreachable)?
        .topics;
    let Some(topic) = topics.into_iter().find(|t| t.name == name) else {
        bail!("topic {name:?} does not exist");
    };
    let request = ListPartitionsRequest {
        topic: name.to_string(),
    };
    let reply = client
        .send(request, |mut c, request| async move {
            c.list_partitions(request).await
        })
        .await
        .with_context(unreachable)?;
    check(reply.outcome).with_context(|| format!("cannot list the partitions of {name:?}"))?;
    let cluster = client
        .call(|mut c| async move { c.get_cluster(GetClusterRequest {}).await })
        .await
        .with_context(unreachable)?;
    let gateways: BTreeMap<i32, Gateway> = cluster
        .gateways
        .iter()
        .map(|g| {
            let gateway = Gateway {
                address: address(&g.kafka_host, g.kafka_port),
                live: g.lease_expires_ms > cluster.now_ms,
            };
            (g.node_id, gateway)
        })
        .collect();
    let mut partitions = Vec::with_capacity(reply.partitions.len());
    for partition in reply.partitions {
        let request = ListSegmentsRequest {
            topic: name.to_string(),
            partition: partition.partition,
        };
        let listed = client
            .send(request, |mut c, request| async move {
                c.list_segments(request).await
            })
            .await
            .with_context(unreachable)?;
        check(listed.outcome).with_context(|| {
            format!("cannot list the segments of {name}-{}", partition.partition)
        })?;
        partitions.push(describe_partition(&partition, &listed.segments, &gateways));
    }
    let description = describe_topic(topic, partitions);
    if json {
        println!("{}", serde_json::to_string_pretty(&description)?);
    } else {
        print!("{}", render(&description));
    }
    Ok(())
}

fn describe_topic(topic: TopicInfo, partitions: Vec<PartitionDescription>) -> TopicDescription {
    TopicDescription {
        topic_id: format_topic_id(&topic.topic_id),
        name: topic.name,
        partition_count: topic.partition_count,
        configs: topic.configs.into_iter().collect(),
        partitions,
    }
}

fn describe_partition(
    partition: &PartitionInfo,
    segments: &[SegmentInfo],
    gateways: &BTreeMap<i32, Gateway>,
) -> PartitionDescription {
    let segments: Vec<SegmentDescription> = segments.iter().filter_map(describe_segment).collect();
    let first_base = segments.first().map(|s| s.base_offset);
    let owner = (partition.owner != NO_OWNER).then_some(partition.owner);
    let gateway = owner.and_then(|id| gateways.get(&id));
    PartitionDescription {
        partition: partition.partition,
        owner,
        owner_address: gateway.map(|g| g.address.clone()),
        owner_live: gateway.map(|g| g.live),
        leader_epoch: partition.leader_epoch,
        log_start_offset: first_base.map_or(partition.log_start_offset, |base| {
            base.max(partition.log_start_offset)
        }),
        segments,
    }
}

/// A live segment as printed; `None` for a deleted one (ListSegments returns
/// only live segments, but a deleted one would hold no records to show).
fn describe_segment(segment: &SegmentInfo) -> Option<SegmentDescription> {
    let mut described = SegmentDescription {
        segment_id: segment.segment_id,
        tier: TIER_BOOKIES,
        state: "open",
        base_offset: segment.base_offset,
        end_offset: None,
        bytes: None,
        ensemble: Some(segment.ensemble.clone()),
        write_quorum: Some(segment.write_quorum),
        ack_quorum: Some(segment.ack_quorum),
        object_key: None,
        object_bytes: None,
        max_timestamp: None,
    };
    match segment.state.as_ref()? {
        State::Open(_) => {}
        State::Sealed(sealed) => {
            described.state = "sealed";
            described.end_offset = Some(sealed.end_offset);
            described.bytes = Some(sealed.bytes);
            described.max_timestamp = sealed.max_timestamp;
        }
        State::Offloaded(offloaded) => {
            described.tier = TIER_OBJECT_STORAGE;
            described.state = "offloaded";
            described.end_offset = Some(offloaded.end_offset);
            described.bytes = Some(offloaded.bytes);
            described.max_timestamp = offloaded.max_timestamp;
            described.ensemble = None;
            described.write_quorum = None;
            described.ack_quorum = None;
            described.object_key = Some(offloaded.object_key.clone());
            described.object_bytes = Some(offloaded.object_size);
        }
        State::Deleted(_) => return None,
    }
    Some(described)
}

/// The readable form: the topic's fields, then one aligned segment table per
/// partition.
fn render(topic: &TopicDescription) -> String {
    let mut out = String::new();
    out.push_str(&format!("Topic          {}\n", topic.name));
    out.push_str(&format!("Topic id       {}\n", topic.topic_id));
    out.push_str(&format!("Partitions     {}\n", topic.partition_count));
    if topic.configs.is_empty() {
        out.push_str("Configs        (none set: cluster defaults apply)\n");
    } else {
        out.push_str("Configs\n");
        let width = topic.configs.keys().map(String::len).max().unwrap_or(0);
        for (key, value) in &topic.configs {
            out.push_str(&format!("  {key:<width$}  {value}\n"));
        }
    }
    for partition in &topic.partitions {
        out.push('\n');
        let owner = match (partition.owner, &partition.owner_address) {
            (None, _) => "none".to_string(),
            (Some(id), None) => format!("gateway {id} (not registered)"),
            (Some(id), Some(address)) => {
                let lapsed = if partition.owner_live == Some(false) {
                    ", lease lapsed"
                } else {
                    ""
                };
                format!("gateway {id} ({address}{lapsed})")
            }
        };
        out.push_str(&format!(
            "Partition {}: owner {owner}, leader epoch {}, log start offset {}\n",
            partition.partition, partition.leader_epoch, partition.log_start_offset
        ));
        if partition.segments.is_empty() {
            out.push_str("  no segments yet\n");
            continue;
        }
        let rows: Vec<Vec<String>> = partition.segments.iter().map(segment_row).collect();
        let header = [
            "SEGMENT",
            "TIER",
            "STATE",
            "BASE-OFFSET",
            "END-OFFSET",
            "BYTES",
            "LOCATION",
            "MAX-TIMESTAMP",
        ];
        out.push_str(&super::table::table(&header, &rows, "  ", "  "));
    }
    out
}

fn segment_row(segment: &SegmentDescription) -> Vec<String> {
    let location = match (&segment.object_key, &segment.ensemble) {
        (Some(key), _) => key.clone(),
        (None, Some(ensemble)) => {
            let ids: Vec<String> = ensemble.iter().map(i32::to_string).collect();
            format!("bookies {}", ids.join(","))
        }
        (None, None) => UNKNOWN.to_string(),
    };
    vec![
        segment.segment_id.to_string(),
        segment.tier.to_string(),
        segment.state.to_string(),
        segment.base_offset.to_string(),
        or_unknown(segment.end_offset),
        or_unknown(segment.bytes),
        location,
        segment
            .max_timestamp
            .map_or(UNKNOWN.to_string(), format_timestamp),
    ]
}

fn or_unknown(value: Option<impl ToString>) -> String {
    value.map_or(UNKNOWN.to_string(), |v| v.to_string())
}

/// `host:port`, with an IPv6 host in brackets.
fn address(host: &str, port: u32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A 16-byte topic id in the usual UUID form; any other length as plain hex.
fn format_topic_id(id: &[u8]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    if id.len() != 16 {
        return hex;
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Milliseconds since the Unix epoch as a UTC time,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`; values outside years 0..=9999 stay as numbers.
fn format_timestamp(ms: i64) -> String {
    const MS_PER_DAY: i64 = 86_400_000;
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_date(days);
    if !(0..=9999).contains(&year) {
        return ms.to_string();
    }
    let (hours, minutes) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (seconds, millis) = (in_day / 1_000 % 60, in_day % 1_000);
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z")
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_date(days_since_epoch: i64) -> (i64, i64, i64) {
    // Count from 0000-03-01 so that the leap day ends each 400-year era's years.
    const DAYS_FROM_0000_03_01_TO_EPOCH: i64 = 719_468;
    const DAYS_PER_ERA: i64 = 146_097;
    let days = days_since_epoch + DAYS_FROM_0000_03_01_TO_EPOCH;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days.rem_euclid(DAYS_PER_ERA);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 = March … 11 = February.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::metadata::{SegmentOffloaded, SegmentOpen, SegmentSealed};

    fn segment(id: u64, base_offset: i64, state: State) -> SegmentInfo {
        SegmentInfo {
            segment_id: id,
            topic: "t".into(),
            partition: 0,
            ensemble: vec![1, 2, 3],
            write_quorum: 3,
            ack_quorum: 2,
            base_offset,
            writer_epoch: 1,
            replaced_bookies: Vec::new(),
            state: Some(state),
        }
    }

    fn partition(log_start_offset: i64) -> PartitionInfo {
        PartitionInfo {
            topic: "t".into(),
            partition: 0,
            owner: 7,
            leader_epoch: 4,
            log_start_offset,
        }
    }

    fn three_tiers() -> Vec<SegmentInfo> {
        vec![
            segment(
                5,
                100,
                State::Offloaded(SegmentOffloaded {
                    end_offset: 200,
                    bytes: 4_000,
                    object_key: "t/0/00000100-5.seg".into(),
                    max_timestamp: Some(0),
                    object_size: 4_100,
                }),
            ),
            segment(
                6,
                200,
                State::Sealed(SegmentSealed {
                    end_offset: 300,
                    bytes: 4_000,
                    max_timestamp: None,
                }),
            ),
            segment(7, 300, State::Open(SegmentOpen {})),
        ]
    }

    #[test]
    fn segments_show_their_tier_and_where_they_live() {
        let gateways = BTreeMap::from([(
            7,
            Gateway {
                address: "127.0.0.1:9092".into(),
                live: true,
            },
        )]);
        let described = describe_partition(&partition(0), &three_tiers(), &gateways);
        assert_eq!(described.log_start_offset, 100, "the first live segment");
        let topic = TopicDescription {
            name: "t".into(),
            topic_id: format_topic_id(&[0xab; 16]),
            partition_count: 1,
            configs: BTreeMap::from([("segment.bytes".into(), "32768".into())]),
            partitions: vec![described],
        };
        let text = render(&topic);
        assert!(
            text.contains("abababab-abab-abab-abab-abababababab"),
            "{text}"
        );
        assert!(text.contains("segment.bytes  32768"), "{text}");
        assert!(
            text.contains("owner gateway 7 (127.0.0.1:9092), leader epoch 4, log start offset 100"),
            "{text}"
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("SEGMENT"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[1],
            [
                "5",
                "object",
                "storage",
                "offloaded",
                "100",
                "200",
                "4000",
                "t/0/00000100-5.seg",
                "1970-01-01T00:00:00.000Z"
            ]
        );
        assert_eq!(
            rows[2],
            ["6", "bookies", "sealed", "200", "300", "4000", "bookies", "1,2,3", "-"]
        );
        assert_eq!(
            rows[3],
            ["7", "bookies", "open", "300", "-", "-", "bookies", "1,2,3", "-"]
        );
        // Columns line up: every row's state starts where the header's does.
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
        let column = lines.iter().find_map(|l| l.find("STATE")).unwrap();
        for line in lines.iter().filter(|l| l.contains("bookies ")) {
            assert!(line[column..].starts_with("sealed") || line[column..].starts_with("open"));
        }
    }

    #[test]
    fn the_log_start_is_the_larger_of_the_two() {
        let none = BTreeMap::new();
        let described = describe_partition(&partition(150), &three_tiers(), &none);
        assert_eq!(described.log_start_offset, 150);
        let empty = describe_partition(&partition(42), &[], &none);
        assert_eq!(empty.log_start_offset, 42);
        let unowned = PartitionInfo {
            owner: NO_OWNER,
            ..partition(0)
        };
        assert_eq!(describe_partition(&unowned, &[], &none).owner, None);
    }

    #[test]
    fn json_leaves_out_what_a_tier_does_not_have() {
        let described = describe_partition(&partition(0), &three_tiers(), &BTreeMap::new());
        let json = serde_json::to_value(&described).unwrap();
        let segments = json["segments"].as_array().unwrap();
        assert_eq!(segments[0]["tier"], "object storage");
        assert_eq!(segments[0]["object_key"], "t/0/00000100-5.seg");
        assert!(segments[0].get("ensemble").is_none());
        assert_eq!(segments[2]["state"], "open");
        assert!(segments[2]["end_offset"].is_null());
        assert_eq!(segments[2]["ensemble"], serde_json::json!([1, 2, 3]));
    }

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(951_782_400_123),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            format_timestamp(1_709_251_199_999),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_timestamp(i64::MAX), i64::MAX.to_string());
    }
}
