//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, DescribeGroups, ListGroups and DeleteGroups. They translate
//! between the wire messages and the [`crate::coordinator`].

use super::{Caller, Gatekeeper};
use crate::coordinator::group::{JoinRequest, SyncRequest};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::time::Duration;

/// FindCoordinator key type of consumer groups.
const GROUP_KEY: i8 = 0;
/// FindCoordinator key type of transactional ids.
const TRANSACTION_KEY: i8 = 1;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// Where the coordinator of `key` is: node id, host and port.
fn locate(gatekeeper: &Gatekeeper, key: &str, key_type: i8) -> Result<(i32, String, i32), i16> {
    // Transactions are not supported, but their ids are mapped like groups so
    // that a transactional client reaches InitProducerId and is told so there.
    if key_type != GROUP_KEY && key_type != TRANSACTION_KEY {
        return Err(ResponseError::InvalidRequest.code());
    }
    if key.is_empty() {
        return Err(ResponseError::InvalidRequest.code());
    }
    let own_id = gatekeeper.config.node_id;
    gatekeeper.cache.read(|state| {
        let slot = state
            .coordinator_slot(key)
            .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
        if slot.owner == own_id {
            return Ok((
                own_id,
                gatekeeper.advertised_host.clone(),
                i32::from(gatekeeper.advertised_port),
            ));
        }
        state
            .gateways
            .get(&slot.owner)
            .map(|g| (g.node_id, g.kafka_host.clone(), g.kafka_port as i32))
            .ok_or(ResponseError::CoordinatorNotAvailable.code())
    })
}

/// Answers FindCoordinator, in the single-key (v0–3) or batched (v4+) form.
pub fn find_coordinator(
    gatekeeper: &Gatekeeper,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let found = locate(gatekeeper, key, request.key_type);
                let mut coordinator = Coordinator::default().with_key(key.clone());
                match found {
                    Ok((node_id, host, port)) => {
                        coordinator = coordinator
                            .with_node_id(BrokerId(node_id))
                            .with_host(text(&host))
                            .with_port(port);
                    }
                    Err(code) => {
                        coordinator = coordinator
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(code);
                    }
                }
                coordinator
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match locate(gatekeeper, &request.key, request.key_type) {
        Ok((node_id, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(node_id))
            .with_host(text(&host))
            .with_port(port),
        Err(code) => FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Answers JoinGroup once the rebalance it takes part in completes.
pub async fn join_group(
    gatekeeper: &Gatekeeper,
    caller: &Caller,
    request: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let session_timeout = millis(request.session_timeout_ms);
    // v0 has no rebalance timeout: the session timeout serves for both.
    let rebalance_timeout = if version == 0 {
        session_timeout
    } else {
        millis(request.rebalance_timeout_ms)
    };
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: caller.client_id.clone(),
        client_host: caller.host.clone(),
        session_timeout,
        rebalance_timeout,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let outcome = gatekeeper.coordinator.join(&request.group_id, join).await;
    let members = outcome
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(text(&m.member_id))
                .with_group_instance_id(if version >= 5 {
                    m.group_instance_id.map(StrBytes::from_string)
                } else {
                    None
                })
                .with_metadata(m.metadata)
        })
        .collect();
    // Before v7 the protocol name may not be null.
    let protocol_name = match outcome.protocol_name {
        Some(name) => Some(text(&name)),
        None if version < 7 => Some(StrBytes::default()),
        None => None,
    };
    JoinGroupResponse::default()
        .with_error_code(outcome.error)
        .with_generation_id(outcome.generation_id)
        .with_protocol_type(outcome.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(protocol_name)
        .with_leader(text(&outcome.leader))
        .with_skip_assignment(version >= 9 && outcome.skip_assignment)
        .with_member_id(text(&outcome.member_id))
        .with_members(members)
}

/// Answers SyncGroup with the member's assignment, once the leader sent it.
pub async fn sync_group(gatekeeper: &Gatekeeper, request: SyncGroupRequest) -> SyncGroupResponse {
    let sync = SyncRequest {
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.as_ref().map(|i| i.to_string()),
        generation_id: request.generation_id,
        protocol_type: request.protocol_type.as_ref().map(|t| t.to_string()),
        protocol_name: request.protocol_name.as_ref().map(|n| n.to_string()),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let outcome = gatekeeper.coordinator.sync(&request.group_id, sync).await;
    SyncGroupResponse::default()
        .with_error_code(outcome.error)
        .with_protocol_type(outcome.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(outcome.protocol_name.map(StrBytes::from_string))
        .with_assignment(outcome.assignment)
}

/// Answers Heartbeat.
pub fn heartbeat(gatekeeper: &Gatekeeper, request: HeartbeatRequest) -> HeartbeatResponse {
    let code = gatekeeper.coordinator.heartbeat(
        &request.group_id,
        &request.member_id,
        request.group_instance_id.as_deref(),
        request.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code)
}

/// Answers LeaveGroup: one member (v0–2) or a batch of them (v3+).
pub fn leave_group(
    gatekeeper: &Gatekeeper,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    match gatekeeper.coordinator.leave(&request.group_id, &members) {
        Err(code) => LeaveGroupResponse::default().with_error_code(code),
        Ok(codes) if version < 3 => {
            LeaveGroupResponse::default().with_error_code(codes.first().copied().unwrap_or(0))
        }
        Ok(codes) => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(codes)
                .map(|((member_id, instance), code)| {
                    MemberResponse::default()
                        .with_member_id(StrBytes::from_string(member_id))
                        .with_group_instance_id(instance.map(StrBytes::from_string))
                        .with_error_code(code)
                })
                .collect(),
        ),
    }
}

/// Answers DescribeGroups.
pub async fn describe_groups(
    gatekeeper: &Gatekeeper,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let described = match gatekeeper.coordinator.describe(&group_id).await {
            Ok(summary) => DescribedGroup::default()
                .with_group_state(text(summary.state))
                .with_protocol_type(text(&summary.protocol_type))
                .with_protocol_data(text(&summary.protocol))
                .with_members(
                    summary
                        .members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(text(&m.member_id))
                                .with_group_instance_id(if version >= 4 {
                                    m.group_instance_id.map(StrBytes::from_string)
                                } else {
                                    None
                                })
                                .with_client_id(text(&m.client_id))
                                .with_client_host(text(&m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                ),
            Err(code) => DescribedGroup::default().with_error_code(code),
        };
        groups.push(described.with_group_id(group_id));
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

/// Answers ListGroups with the groups this gateway coordinates.
pub async fn list_groups(
    gatekeeper: &Gatekeeper,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let listed = match gatekeeper.coordinator.list().await {
        Ok(listed) => listed,
        Err(code) => return ListGroupsResponse::default().with_error_code(code),
    };
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let classic_type = request.types_filter.is_empty()
        || request
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"));
    let groups = listed
        .into_iter()
        .filter(|_| classic_type)
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .map(|g| {
            let mut listed = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type));
            if version >= 4 {
                listed = listed.with_group_state(text(g.state));
            }
            if version >= 5 {
                listed = listed.with_group_type(text("classic"));
            }
            listed
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// Answers DeleteGroups.
pub async fn delete_groups(
    gatekeeper: &Gatekeeper,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let code = gatekeeper.coordinator.delete_group(&group_id).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
