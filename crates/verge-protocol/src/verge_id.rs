//! [`VergeId`]: the name of one upstream message, `{queue id}/{lane}/{seq}`,
//! carried in the [`crate::topics::VERGE_ID_PROPERTY`] user property so the
//! cloud stores a message that was sent again only once.

use std::fmt;
use std::str::FromStr;

/// Where an upstream message sits in its node's cache queue; unique per
/// node and stable across resends and restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VergeId {
    /// The cache queue's id (16 hex characters, stable across restarts).
    pub queue_id: String,
    /// The lane the message was queued on.
    pub lane: String,
    /// The message's sequence number in its lane.
    pub seq: u64,
}

impl VergeId {
    /// The text of the id of message `seq` on `lane` of queue `queue_id`,
    /// without building a [`VergeId`] (the bridge does this per message).
    pub fn format(queue_id: &str, lane: &str, seq: u64) -> String {
        format!("{queue_id}/{lane}/{seq}")
    }
}

impl fmt::Display for VergeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.queue_id, self.lane, self.seq)
    }
}

/// Why a text is not a [`VergeId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseVergeIdError(String);

impl fmt::Display for ParseVergeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a verge id (`{{queue id}}/{{lane}}/{{seq}}`)",
            self.0
        )
    }
}

impl std::error::Error for ParseVergeIdError {}

impl FromStr for VergeId {
    type Err = ParseVergeIdError;

    fn from_str(s: &str) -> Result<VergeId, ParseVergeIdError> {
        let bad = || ParseVergeIdError(s.to_owned());
        let mut parts = s.split('/');
        let (Some(queue_id), Some(lane), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if queue_id.is_empty() || lane.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(VergeId {
            queue_id: queue_id.to_owned(),
            lane: lane.to_owned(),
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        let id = VergeId {
            queue_id: "0123456789abcdef".into(),
            lane: "alarms".into(),
            seq: 42,
        };
        assert_eq!(id.to_string(), "0123456789abcdef/alarms/42");
        assert_eq!(
            VergeId::format("0123456789abcdef", "alarms", 42),
            id.to_string()
        );
        assert_eq!("0123456789abcdef/alarms/42".parse(), Ok(id));
        let max = format!("q/l/{}", u64::MAX);
        assert_eq!(max.parse::<VergeId>().map(|v| v.to_string()), Ok(max));
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [
            "",
            "q",
            "q/l",
            "q/l/",
            "/l/1",
            "q//1",
            "q/l/1/2",
            "q/l/x",
            "q/l/-1",
            "q/l/+1",
            "q/l/18446744073709551616",
        ] {
            let e = bad.parse::<VergeId>();
            assert_eq!(e, Err(ParseVergeIdError(bad.to_owned())), "{bad}");
        }
        assert_eq!(
            "x".parse::<VergeId>().map_err(|e| e.to_string()),
            Err("`x` is not a verge id (`{queue id}/{lane}/{seq}`)".to_owned())
        );
    }
}
