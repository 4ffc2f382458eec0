//! Echo: returns the input message unchanged. It does nothing on purpose,
//! so that a benchmark of it measures the cost of a call itself: copying
//! the input in, decoding it, encoding the output and reading it back.
//!
//! What the node gets back is the input as the ABI carries it: same topic,
//! payload, content type, user properties and QoS, not retained (the input
//! has no retain flag), stamped with the node's time.

use verge_function::{Message, Result};

verge_function::export!(echo);

fn echo(msg: Message) -> Result<Vec<Message>> {
    Ok(vec![msg])
}

#[cfg(test)]
mod tests {
    use verge_function::mock;

    use super::*;

    #[test]
    fn returns_the_input() {
        let msg = Message::json("devices/d1/telemetry", "{\"t\":21.5}")
            .with_user_property("rule", "r1")
            .with_qos(2)
            .with_time_ms(7);
        assert_eq!(mock::invoke(echo, &msg), Ok(vec![msg]));
        let binary = Message::new("b", vec![0u8, 0xff]).with_qos(0);
        assert_eq!(mock::invoke(echo, &binary), Ok(vec![binary]));
    }
}
