//! Node credentials in Mosquitto's dynamic-security plugin
//! (`mqtt.external.provision = "mosquitto-dynsec"`): JSON commands
//! published on `$CONTROL/dynamic-security/v1` over one MQTT 5 admin
//! connection, answers read from `…/v1/response` and matched by their
//! `correlationData`.
//!
//! Per node `n`: a client `n` with the node's secret as its password and a
//! role `verge-node-n` whose ACLs say what [`super::allowed`] says (publish
//! `nodes/n/up/#`, subscribe and receive `nodes/n/down/#`, everything else
//! denied in the role itself, not only by the plugin's defaults). The cloud
//! replicas' user gets the role `verge-cloud`. The plain secret exists only
//! at join, so the client is written then (a rejoin replaces it, ending the
//! old connection); a node deleted loses client and role; at start the
//! cloud removes the clients of nodes that no longer exist and names the
//! joined nodes the broker does not know (they must rejoin: the cloud keeps
//! only a hash of their secret).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use crate::config::MqttExternalSection;
use crate::error::CloudError;

const COMMAND_TOPIC: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

/// The role of the cloud replicas' user.
pub const CLOUD_ROLE: &str = "verge-cloud";

/// The textname of every broker client the cloud makes for a node: only
/// such a client is replaced or deleted.
pub const NODE_TEXTNAME: &str = "verge node";

/// Node roles are named this plus the node id.
const NODE_ROLE_PREFIX: &str = "verge-node-";

/// How long one request waits for the broker (connecting included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most requests waiting for an answer at once.
const MAX_PENDING: usize = 1024;

/// Why a dynamic-security request failed; every one is worth retrying
/// later except [`DynsecError::Command`], which needs the broker's
/// configuration looked at.
#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    /// The admin connection is down (checked before a transaction opens,
    /// so a join does not hold the database while the broker is away).
    #[error("not connected to the broker's dynamic-security plugin (mqtt.external.admin_url)")]
    Down,
    /// No answer in time (broker down, unreachable, or admin refused).
    #[error("the broker's dynamic-security plugin did not answer within {0:?}")]
    Timeout(Duration),
    /// Too many requests waiting already.
    #[error("too many dynamic-security requests waiting")]
    Busy,
    /// The admin connection is gone (the cloud is stopping).
    #[error("the dynamic-security admin connection is closed")]
    Closed,
    /// A broker client with the node's name exists that the cloud did not
    /// make (another application's user): left alone.
    #[error("the broker has a client `{0}` that is not a Verge node; it is left alone")]
    Foreign(String),
    /// The plugin refused a command.
    #[error("dynamic-security `{command}` failed: {error}")]
    Command {
        /// The command.
        command: String,
        /// The plugin's message.
        error: String,
    },
}

/// One answer of the plugin.
#[derive(Debug, Clone, Deserialize)]
struct Answer {
    command: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default, rename = "correlationData")]
    correlation: Option<String>,
}

#[derive(Deserialize)]
struct Answers {
    responses: Vec<Answer>,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Answer>>>>>;

/// The admin connection to the dynamic-security plugin. Cheap to clone.
#[derive(Clone)]
pub struct Dynsec {
    client: AsyncClient,
    /// True while connected and subscribed to the answers.
    ready: watch::Receiver<bool>,
    pending: Pending,
}

/// The password in the file `path` of setting `key` (every password file
/// the cloud reads goes through here, so the consumer logs in with the
/// password the hooks and the plugin check): its first line, surrounding
/// whitespace removed. A file with any group or other permission bit, or
/// an empty password, is refused.
pub fn read_password(key: &str, path: Option<&std::path::Path>) -> Result<String, CloudError> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.ok_or_else(|| CloudError::Other(format!("{key} is not set")))?;
    let io = |error| CloudError::Io {
        what: format!("{key} {}", path.display()),
        error,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CloudError::Other(format!(
            "{key}: {} is readable by group or others (mode {mode:03o}); `chmod 600` it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        return Err(CloudError::Other(format!(
            "{key}: {} is empty",
            path.display()
        )));
    }
    Ok(line)
}

/// `mqtt://host:port` → (host, port).
fn parse_url(url: &str) -> Result<(String, u16), CloudError> {
    let bad = || {
        CloudError::Other(format!(
            "mqtt.external.admin_url: `{url}` is not `mqtt://host:port`"
        ))
    };
    let rest = url.strip_prefix("mqtt://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

impl Dynsec {
    /// Check the settings and start the admin connection (it connects in
    /// the background and reconnects when lost). Returns the connection
    /// and its task, which ends when `stop` turns true.
    pub fn start(
        cfg: &MqttExternalSection,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(Dynsec, tokio::task::JoinHandle<()>), CloudError> {
        let (host, port) = parse_url(&cfg.admin_url)?;
        if cfg.admin_username.is_empty() {
            return Err(CloudError::Other(
                "mqtt.external.admin_username is not set (the dynamic-security admin user)".into(),
            ));
        }
        let password = read_password(
            "mqtt.external.admin_password_file",
            cfg.admin_password_file.as_deref(),
        )?;
        let id = format!("verge-dynsec-{}", &crate::db::random_id()[..12]);
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_credentials(cfg.admin_username.clone(), password)
            .set_clean_start(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(Some(64 << 20));
        let (client, eventloop) = AsyncClient::new(opts, 64);
        let (ready_tx, ready) = watch::channel(false);
        let pending: Pending = Arc::default();
        let task = tokio::spawn({
            let client = client.clone();
            let pending = pending.clone();
            async move {
                tokio::select! {
                    _ = drive(eventloop, client.clone(), ready_tx, pending) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                let _ = client.try_disconnect();
            }
        });
        Ok((
            Dynsec {
                client,
                ready,
                pending,
            },
            task,
        ))
    }

    /// Whether the admin connection is up (connected and subscribed to
    /// the answers) right now.
    pub fn is_up(&self) -> bool {
        *self.ready.borrow()
    }

    /// Send `commands` in one message and return the plugin's answers, in
    /// order; an error when any answer is an error `tolerated` does not
    /// accept.
    async fn request(
        &self,
        mut commands: Vec<Value>,
        tolerated: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<Answer>, DynsecError> {
        let id = crate::db::random_id();
        for (i, c) in commands.iter_mut().enumerate() {
            c["correlationData"] = json!(format!("{id}:{i}"));
        }
        let work = async {
            let mut ready = self.ready.clone();
            ready
                .wait_for(|r| *r)
                .await
                .map_err(|_| DynsecError::Closed)?;
            let (tx, rx) = oneshot::channel();
            {
                let mut pending = self.pending.lock().map_err(|_| DynsecError::Closed)?;
                if pending.len() >= MAX_PENDING {
                    return Err(DynsecError::Busy);
                }
                pending.insert(id.clone(), tx);
            }
            let payload = json!({ "commands": commands }).to_string();
            self.client
                .publish(COMMAND_TOPIC, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|_| DynsecError::Closed)?;
            rx.await.map_err(|_| DynsecError::Closed)
        };
        let answers = tokio::time::timeout(REQUEST_TIMEOUT, work).await;
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        let answers = answers.map_err(|_| DynsecError::Timeout(REQUEST_TIMEOUT))??;
        for a in &answers {
            if let Some(e) = &a.error
                && !tolerated(&a.command, e)
            {
                return Err(DynsecError::Command {
                    command: a.command.clone(),
                    error: e.clone(),
                });
            }
        }
        Ok(answers)
    }

    /// Refuse to touch a broker client `id` the cloud did not make as a
    /// node: one whose textname is not [`NODE_TEXTNAME`] and that does not
    /// hold the node's role `verge-node-{id}`.
    async fn check_not_foreign(&self, id: &str) -> Result<(), DynsecError> {
        let answers = self
            .request(
                vec![json!({"command": "getClient", "username": id})],
                |command, error| command == "getClient" && error.contains("not found"),
            )
            .await?;
        let Some(client) = answers
            .iter()
            .find(|a| a.command == "getClient" && a.error.is_none())
            .and_then(|a| a.data.as_ref())
            .map(|d| &d["client"])
        else {
            return Ok(()); // no such client
        };
        let role = format!("{NODE_ROLE_PREFIX}{id}");
        let ours = client["textname"].as_str() == Some(NODE_TEXTNAME)
            || client["roles"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["rolename"].as_str() == Some(&role)));
        if ours {
            Ok(())
        } else {
            Err(DynsecError::Foreign(id.to_owned()))
        }
    }

    /// Give node `id` the password `secret`, its role and its client id
    /// (`verge-node-{id}`, enforced by Mosquitto): a client made anew, so
    /// a connection with an older secret ends. A client of that name the
    /// cloud did not make is left alone ([`DynsecError::Foreign`]).
    pub async fn provision_node(&self, id: &str, secret: &str) -> Result<(), DynsecError> {
        self.check_not_foreign(id).await?;
        let role = format!("{NODE_ROLE_PREFIX}{id}");
        let commands = vec![
            json!({"command": "createRole", "rolename": role, "acls": node_acls(id)}),
            json!({"command": "deleteClient", "username": id}),
            json!({"command": "createClient", "username": id, "password": secret,
                   "clientid": super::node_client_id(id),
                   "textname": NODE_TEXTNAME, "roles": [{"rolename": role, "priority": 0}]}),
        ];
        self.request(commands, |command, error| match command {
            "createRole" => error.contains("already exists"),
            "deleteClient" => error.contains("not found"),
            _ => false,
        })
        .await?;
        Ok(())
    }

    /// Remove node `id`'s client (ending its connections) and role; a
    /// client of that name the cloud did not make is left alone.
    pub async fn remove_node(&self, id: &str) -> Result<(), DynsecError> {
        self.check_not_foreign(id).await?;
        let commands = vec![
            json!({"command": "deleteClient", "username": id}),
            json!({"command": "deleteRole", "rolename": format!("{NODE_ROLE_PREFIX}{id}")}),
        ];
        self.request(commands, |_, error| error.contains("not found"))
            .await?;
        Ok(())
    }

    /// Make sure the cloud replicas' user exists with `password` and the
    /// role `verge-cloud` (without ending the connections other replicas
    /// made with it).
    pub async fn ensure_cloud_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(), DynsecError> {
        let commands = vec![
            json!({"command": "createRole", "rolename": CLOUD_ROLE, "acls": cloud_acls()}),
            json!({"command": "createClient", "username": username, "password": password,
                   "textname": "verge cloud replicas",
                   "roles": [{"rolename": CLOUD_ROLE, "priority": 0}]}),
            json!({"command": "setClientPassword", "username": username, "password": password}),
            json!({"command": "getClient", "username": username}),
        ];
        let answers = self
            .request(commands, |command, error| {
                matches!(command, "createRole" | "createClient") && error.contains("already exists")
            })
            .await?;
        let has_role = answers
            .iter()
            .find(|a| a.command == "getClient")
            .and_then(|a| a.data.as_ref())
            .and_then(|d| d["client"]["roles"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|r| r["rolename"] == CLOUD_ROLE);
        if !has_role {
            // Mosquitto 2.0.11 answers "Internal error" when the client
            // has the role already: ask only when it has not.
            self.request(
                vec![json!({"command": "addClientRole", "username": username,
                            "rolename": CLOUD_ROLE, "priority": 0})],
                |_, _| false,
            )
            .await?;
        }
        Ok(())
    }

    /// The ids of the nodes that have a role on the broker.
    pub async fn node_ids(&self) -> Result<Vec<String>, DynsecError> {
        let answers = self
            .request(
                vec![json!({"command": "listRoles", "verbose": false, "count": -1, "offset": 0})],
                |_, _| false,
            )
            .await?;
        let roles = answers
            .first()
            .and_then(|a| a.data.as_ref())
            .and_then(|d| d["roles"].as_array().cloned())
            .unwrap_or_default();
        Ok(roles
            .iter()
            .filter_map(|r| r.as_str().or_else(|| r["rolename"].as_str()))
            .filter_map(|r| r.strip_prefix(NODE_ROLE_PREFIX))
            .map(str::to_owned)
            .collect())
    }

    /// The usernames of every client on the broker.
    pub async fn client_names(&self) -> Result<Vec<String>, DynsecError> {
        let answers = self
            .request(
                vec![json!({"command": "listClients", "verbose": false, "count": -1, "offset": 0})],
                |_, _| false,
            )
            .await?;
        let clients = answers
            .first()
            .and_then(|a| a.data.as_ref())
            .and_then(|d| d["clients"].as_array().cloned())
            .unwrap_or_default();
        Ok(clients
            .iter()
            .filter_map(|c| c.as_str().or_else(|| c["username"].as_str()))
            .map(str::to_owned)
            .collect())
    }
}

fn acl(acltype: &str, topic: &str, allow: bool, priority: i64) -> Value {
    json!({"acltype": acltype, "topic": topic, "allow": allow, "priority": priority})
}

/// A node's role: its own topics allowed, everything else denied (lower
/// priority, checked after).
fn node_acls(id: &str) -> Value {
    use verge_protocol::topics;
    json!([
        acl("publishClientSend", &topics::up_filter(id), true, 10),
        acl("subscribePattern", &topics::down_filter(id), true, 10),
        acl("publishClientReceive", &topics::down_filter(id), true, 10),
        acl("publishClientSend", "#", false, 0),
        acl("subscribePattern", "#", false, 0),
        acl("publishClientReceive", "#", false, 0),
    ])
}

/// The cloud replicas' role. Mosquitto checks a shared subscription with
/// its `$share/{group}/` prefix, so the pattern carries one.
fn cloud_acls() -> Value {
    use verge_protocol::device::DeviceChannel;
    use verge_protocol::topics;
    let replies = topics::up("+", &DeviceChannel::StoreReply.topic("#"));
    json!([
        acl(
            "subscribePattern",
            &format!("$share/+/{}", topics::up_filter_all()),
            true,
            10
        ),
        acl("subscribePattern", &replies, true, 10),
        acl("publishClientReceive", &topics::up_filter_all(), true, 10),
        acl("publishClientSend", &topics::down_filter("+"), true, 10),
        acl("publishClientSend", "#", false, 0),
        acl("subscribePattern", "#", false, 0),
    ])
}

/// Poll the event loop: subscribe to the answers after each connect, hand
/// each answer to its waiting request, retry a lost connection every
/// second.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    ready: watch::Sender<bool>,
    pending: Pending,
) {
    let mut warned = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                warned = false;
                if client
                    .subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let ok = ack.return_codes.iter().all(|c| {
                    matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                });
                if !ok {
                    tracing::warn!(
                        "mqtt.external.admin_username may not read `{RESPONSE_TOPIC}`: is it the dynamic-security admin?"
                    );
                }
                let _ = ready.send(ok);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic.as_ref() == RESPONSE_TOPIC.as_bytes() {
                    answer(&pending, &p.payload);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = ready.send(false);
                if !warned {
                    tracing::warn!(
                        "dynamic-security admin connection (mqtt.external.admin_url): {e}"
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Hand an answer message to the request it answers (by the id before the
/// `:` of its first `correlationData`); answers to other processes'
/// requests (another replica's) are ignored.
fn answer(pending: &Pending, payload: &Bytes) {
    let Ok(answers) = serde_json::from_slice::<Answers>(payload) else {
        return;
    };
    let Some(id) = answers
        .responses
        .first()
        .and_then(|a| a.correlation.as_deref())
        .and_then(|c| c.split_once(':'))
        .map(|(id, _)| id.to_owned())
    else {
        return;
    };
    let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
    if let Some(tx) = waiter {
        let _ = tx.send(answers.responses);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_are_mqtt_host_port() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").ok(),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(
            parse_url("mqtt://broker.example.com:1883/").ok(),
            Some(("broker.example.com".into(), 1883))
        );
        for bad in [
            "127.0.0.1:1883",
            "mqtts://h:8883",
            "mqtt://h",
            "mqtt://:1",
            "mqtt://h:0",
            "mqtt://h:x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_node_role_allows_what_the_acl_decision_allows() {
        use super::super::{Action, Caller, allowed};
        let acls = node_acls("n1");
        let allows: Vec<(&str, &str)> = acls
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["allow"] == true)
            .filter_map(|a| Some((a["acltype"].as_str()?, a["topic"].as_str()?)))
            .collect();
        assert_eq!(
            allows,
            [
                ("publishClientSend", "nodes/n1/up/#"),
                ("subscribePattern", "nodes/n1/down/#"),
                ("publishClientReceive", "nodes/n1/down/#"),
            ]
        );
        assert!(allowed(
            Caller::Node("n1"),
            Action::Subscribe,
            "nodes/n1/down/#"
        ));
        assert!(allowed(
            Caller::Node("n1"),
            Action::Publish,
            "nodes/n1/up/x"
        ));
    }

    #[test]
    fn answers_go_to_their_request_only() {
        let pending: Pending = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        pending.lock().expect("lock").insert("abc".into(), tx);
        answer(
            &pending,
            &Bytes::from_static(br#"{"responses":[{"command":"x","correlationData":"other:0"}]}"#),
        );
        assert!(rx.try_recv().is_err());
        answer(
            &pending,
            &Bytes::from_static(
                br#"{"responses":[{"command":"createRole","error":"Role already exists","correlationData":"abc:0"}]}"#,
            ),
        );
        let got = rx.try_recv().expect("answered");
        assert_eq!(got[0].error.as_deref(), Some("Role already exists"));
        assert!(pending.lock().expect("lock").is_empty());
    }
}
