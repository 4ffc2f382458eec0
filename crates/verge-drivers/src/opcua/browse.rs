//! Browsing a server's address space, for building point tables.

use opcua::types::{
    BrowseDescription, BrowseDescriptionResultMask, BrowseDirection, NodeId, ReferenceTypeId,
};
use serde::Serialize;

use crate::config::DriverConfig;
use crate::protocol::DriverError;

use super::bounded;
use super::{OpcuaClient, node_id};

/// Most references [`browse`] returns.
const MAX_BROWSE: usize = 10_000;

impl OpcuaClient {
    /// The references of `node` (default: the Objects folder), following
    /// continuation points, on this client's session.
    pub async fn browse_node(&self, node: Option<&str>) -> Result<Vec<BrowseEntry>, DriverError> {
        let conn = self.live()?;
        let id = match node {
            Some(n) => node_id(n).map_err(DriverError::Invalid)?,
            None => NodeId::objects_folder_id(),
        };
        let desc = BrowseDescription {
            node_id: id,
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: 0,
            result_mask: BrowseDescriptionResultMask::all().bits(),
        };
        let timeout = self.cfg.timeout;
        let mut out = Vec::new();
        let mut results = bounded(timeout, conn.session.browse(&[desc], 1000, None)).await?;
        while let Some(r) = results.into_iter().next() {
            if r.status_code.is_bad() {
                return Err(DriverError::Refused(r.status_code.to_string()));
            }
            for rd in r.references.into_iter().flatten() {
                out.push(BrowseEntry {
                    node_id: rd.node_id.node_id.to_string(),
                    browse_name: rd.browse_name.name.as_ref().to_string(),
                    display_name: rd.display_name.text.as_ref().to_string(),
                    node_class: format!("{:?}", rd.node_class),
                    type_definition: rd.type_definition.node_id.to_string(),
                });
            }
            if r.continuation_point.is_null() || out.len() >= MAX_BROWSE {
                if !r.continuation_point.is_null() {
                    let _ = bounded(
                        timeout,
                        conn.session.browse_next(true, &[r.continuation_point]),
                    )
                    .await;
                }
                break;
            }
            results = bounded(
                timeout,
                conn.session.browse_next(false, &[r.continuation_point]),
            )
            .await?;
        }
        out.truncate(MAX_BROWSE);
        Ok(out)
    }
}

/// One reference found by [`browse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrowseEntry {
    /// The target's node id, usable as a point address.
    pub node_id: String,
    /// Its browse name.
    pub browse_name: String,
    /// Its display name.
    pub display_name: String,
    /// `Object`, `Variable`, `Method`…
    pub node_class: String,
    /// Its type definition's node id.
    pub type_definition: String,
}

/// Browse `node` (default: the Objects folder, `i=85`) on the server of
/// `cfg` over a short-lived session with the driver's endpoint, security
/// and PKI: the children (hierarchical references) of the node.
pub async fn browse(
    cfg: &DriverConfig,
    node: Option<&str>,
) -> Result<Vec<BrowseEntry>, DriverError> {
    let mut c = OpcuaClient::new(cfg).map_err(DriverError::Invalid)?;
    let limit = cfg.timeout * 5;
    let opened = tokio::time::timeout(limit, c.open()).await;
    match opened {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(DriverError::Timeout(
                u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            ));
        }
    }
    if let Some(conn) = &mut c.conn {
        conn.ready = true;
    }
    let r = c.browse_node(node).await;
    c.disconnect().await;
    r
}
