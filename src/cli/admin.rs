//! `strata admin`: inspect and change a running cluster through the metadata
//! service, and its consumer groups through the gateways' Kafka listeners.

pub mod gateways;
pub mod groups;
mod kafka_wire;
pub mod segments;
mod table;
mod topics;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::time::Duration;
use strata_metadata::client::MetadataClient;
use strata_proto::admin::{
    AddMetadataLearnerRequest, ClusterStatusRequest, MetadataMember, PromoteMetadataNodeRequest,
    RemoveMetadataNodeRequest,
};
use strata_proto::metadata::{CreateTopicRequest, DeleteTopicRequest, ListTopicsRequest, Outcome};

/// Flags of `strata admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Metadata node addresses, comma-separated `host:port`.
    #[arg(
        long,
        env = "STRATA_ADMIN_METADATA_ADDRS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7600"
    )]
    pub metadata_addrs: Vec<String>,

    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin operations.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Show the cluster: id, metadata members, raft leader and term, gateways,
    /// bookies, and how many segments are under-replicated.
    Status,
    /// Manage topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Change the members of the metadata group.
    #[command(subcommand)]
    Metadata(MembersCommand),
    /// Consumer groups: list, describe (with lag), reset offsets.
    Groups(groups::GroupsArgs),
    /// Gateways: list what each owns, drain one.
    #[command(subcommand)]
    Gateways(gateways::GatewaysCommand),
    /// Segments: list those under-replicated (a replica lost with a dead bookie).
    #[command(subcommand)]
    Segments(segments::SegmentsCommand),
}

/// Membership changes of the metadata raft group.
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a running node (started with `--join true`) as a learner; returns once it has caught up.
    AddLearner {
        /// The new node's id.
        node_id: u64,
        /// The new node's gRPC address, `host:port`.
        grpc_addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        node_id: u64,
    },
    /// Remove a voter or learner from the group.
    Remove {
        /// The node's id.
        node_id: u64,
    },
}

/// Topic operations.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// List topics with their partition counts.
    List,
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partition count (default: the cluster's default).
        #[arg(long, default_value_t = -1)]
        partitions: i32,
        /// Topic config as `key=value`; may be repeated.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// Show a topic, its configs and, per partition, its owner, log start and
    /// live segments with the tier (bookies or object storage) holding each.
    Describe {
        /// Topic name.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// Runs one admin operation.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client =
        MetadataClient::connect_lazy(&args.metadata_addrs)?.with_retry_for(Duration::from_secs(3));
    let unreachable = || format!("cannot reach metadata at {}", args.metadata_addrs.join(","));
    match args.command {
        AdminCommand::Groups(groups) => groups::run(groups, &client).await?,
        AdminCommand::Gateways(command) => gateways::run(command, &client).await?,
        AdminCommand::Segments(command) => segments::run(command, &client).await?,
        AdminCommand::Status => {
            let status = client
                .admin_call(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
                .await
                .with_context(unreachable)?;
            println!("cluster id     {}", status.cluster_id);
            println!("answered by    metadata node {}", status.responding_node);
            println!(
                "raft leader    {} (term {})",
                status.raft_leader, status.raft_term
            );
            println!("last applied   {}", status.last_applied);
            print_members(&status.metadata_members);
            println!("gateways:");
            for g in &status.gateways {
                let state = liveness(g.lease_expires_ms, status.now_ms);
                println!(
                    "  {:>4}  {:<5} {}:{}  zone={}",
                    g.node_id, state, g.kafka_host, g.kafka_port, g.zone
                );
            }
            println!("bookies:");
            for b in &status.bookies {
                let state = liveness(b.lease_expires_ms, status.now_ms);
                println!(
                    "  {:>4}  {:<5} {}  zone={}  free={} MiB",
                    b.node_id,
                    state,
                    b.grpc_addr,
                    b.zone,
                    b.free_bytes / (1024 * 1024)
                );
            }
            println!("topics         {}", status.topic_count);
            println!("partitions     {}", status.partition_count);
            println!(
                "under-replicated segments  {}",
                status.under_replicated_segments
            );
        }
        AdminCommand::Metadata(command) => {
            let members = match command {
                MembersCommand::AddLearner { node_id, grpc_addr } => {
                    let request = AddMetadataLearnerRequest { node_id, grpc_addr };
                    client
                        .admin_send(request, |mut c, request| async move {
                            c.add_metadata_learner(request).await
                        })
                        .await
                }
                MembersCommand::Promote { node_id } => {
                    client
                        .admin_call(|mut c| async move {
                            c.promote_metadata_node(PromoteMetadataNodeRequest { node_id })
                                .await
                        })
                        .await
                }
                MembersCommand::Remove { node_id } => {
                    client
                        .admin_call(|mut c| async move {
                            c.remove_metadata_node(RemoveMetadataNodeRequest { node_id })
                                .await
                        })
                        .await
                }
            }
            .context("membership change failed")?;
            print_members(&members.metadata_members);
        }
        AdminCommand::Topics(TopicsCommand::List) => {
            let topics = client
                .call(|mut c| async move { c.list_topics(ListTopicsRequest {}).await })
                .await
                .with_context(unreachable)?
                .topics;
            for topic in topics {
                println!("{}\t{}", topic.name, topic.partition_count);
            }
        }
        AdminCommand::Topics(TopicsCommand::Create {
            name,
            partitions,
            configs,
        }) => {
            let configs = configs
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => Ok((k.to_string(), v.to_string())),
                    None => bail!("topic config {kv:?} is not KEY=VALUE"),
                })
                .collect::<anyhow::Result<_>>()?;
            let request = CreateTopicRequest {
                name: name.clone(),
                partition_count: partitions,
                configs,
                validate_only: false,
            };
            let reply = client
                .send(request, |mut c, request| async move {
                    c.create_topic(request).await
                })
                .await
                .with_context(unreachable)?;
            check(reply.outcome)?;
            let count = reply.topic.map(|t| t.partition_count).unwrap_or_default();
            println!("created topic {name} with {count} partitions");
        }
        AdminCommand::Topics(TopicsCommand::Describe { name, json }) => {
            topics::describe(&client, &name, json).await?
        }
        AdminCommand::Topics(TopicsCommand::Delete { name }) => {
            let request = DeleteTopicRequest { name: name.clone() };
            let reply = client
                .send(request, |mut c, request| async move {
                    c.delete_topic(request).await
                })
                .await
                .with_context(unreachable)?;
            check(reply.outcome)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn liveness(lease_expires_ms: u64, now_ms: u64) -> &'static str {
    if lease_expires_ms > now_ms {
        "live"
    } else {
        "dead"
    }
}

/// Turns a refused outcome into an error that names the Kafka error code.
fn check(outcome: Option<Outcome>) -> anyhow::Result<()> {
    match outcome {
        Some(outcome) if !outcome.is_ok() => {
            bail!(
                "{} (error code {})",
                outcome.error_message,
                outcome.error_code
            )
        }
        _ => Ok(()),
    }
}

/// Prints the members of the metadata group.
fn print_members(members: &[MetadataMember]) {
    println!("metadata members:");
    for member in members {
        println!(
            "  {:>4}  {:<8} {}",
            member.node_id, member.role, member.grpc_addr
        );
    }
}
