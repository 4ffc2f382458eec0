//! The webhook action against a small HTTP/1.1 server run by the test on
//! 127.0.0.1:0: what arrives, how answers and failures are classified,
//! keep-alive reuse and reconnects, and refused settings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use verge_broker::duration::HumanDuration;
use verge_broker::{Broker, BrokerConfig};
use verge_rules::action::build;
use verge_rules::config::{Delivery, WebhookConfig};
use verge_rules::{Action, ActionError, ActionKind, Output, Services};

const WAIT: Duration = Duration::from_secs(5);

/// A request as the server saw it.
#[derive(Debug)]
struct Seen {
    /// The request line, e.g. `POST /hook HTTP/1.1`.
    line: String,
    /// Header names in lower case, with their values.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with the n-th request (counted from 0 over all
/// connections).
#[derive(Clone, Copy)]
enum Reply {
    /// Answer with this status and keep the connection open.
    Status(u16),
    /// Answer 200, then close the connection without saying so.
    OkThenClose,
    /// Read the request and never answer.
    Silent,
    /// Read the request and close the connection without answering.
    Hangup,
}

struct Server {
    addr: std::net::SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: mpsc::UnboundedReceiver<Seen>,
}

impl Server {
    async fn start(reply: fn(usize) -> Reply) -> Server {
        Server::start_on("127.0.0.1:0", reply)
            .await
            .expect("bind 127.0.0.1")
    }

    async fn start_on(bind: &str, reply: fn(usize) -> Reply) -> std::io::Result<Server> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let accepts = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        let (tx, requests) = mpsc::unbounded_channel();
        let accepted = accepts.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, reply, count.clone(), tx.clone()));
            }
        });
        Ok(Server {
            addr,
            accepts,
            requests,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("a request in time")
            .expect("server running")
    }
}

async fn serve(
    mut socket: TcpStream,
    reply: fn(usize) -> Reply,
    count: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut socket, &mut buf).await {
        let _ = tx.send(seen);
        match reply(count.fetch_add(1, Ordering::SeqCst)) {
            Reply::Status(code) => {
                let body = format!("status {code}");
                let head = format!(
                    "HTTP/1.1 {code} X\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
            }
            Reply::OkThenClose => {
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                return;
            }
            Reply::Hangup => return,
            Reply::Silent => {
                // Hold the connection until the client gives up.
                let mut sink = [0u8; 1024];
                while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

/// Read one request (head and `content-length` body); `None` at end of
/// stream.
async fn read_request<S: AsyncRead + Unpin>(socket: &mut S, buf: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    while buf.len() < len {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..len).collect();
    Some(Seen {
        line,
        headers,
        body,
    })
}

fn config(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        headers: BTreeMap::new(),
        timeout: HumanDuration(WAIT),
        delivery: Delivery::default(),
    }
}

/// Build the action through the one list of action kinds, as a rule would.
fn webhook(broker: &Broker, c: WebhookConfig) -> Result<Arc<dyn Action>, String> {
    build(&ActionKind::Webhook(c), &Services::new(broker.handle())).map_err(|e| e.to_string())
}

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

fn output(json: &'static str) -> Output {
    Output {
        rule: "overheat".into(),
        row: verge_sql::Row::default(),
        json: Bytes::from_static(json.as_bytes()),
        topic: "plant/1/temp".into(),
        time_ms: 1_700_000_000_000,
        hops: 1,
    }
}

async fn deliver(hook: &Arc<dyn Action>) -> Result<(), ActionError> {
    tokio::time::timeout(WAIT * 2, hook.deliver(&output("{\"temp\":91}")))
        .await
        .expect("deliver returns within its own time limit")
}

#[tokio::test]
async fn body_and_headers_arrive() {
    let broker = broker();
    let mut server = Server::start(|_| Reply::Status(200)).await;
    let mut c = config(&server.url("/hook?source=verge&n=1"));
    c.headers
        .insert("Authorization".into(), "Bearer t0ken".into());
    c.headers.insert("x-site".into(), "plant 1".into());
    let hook = webhook(&broker, c).expect("webhook");

    hook.deliver(&output("{\"temp\":91,\"device\":\"d1\"}"))
        .await
        .expect("delivered");

    let seen = server.next().await;
    assert_eq!(seen.line, "POST /hook?source=verge&n=1 HTTP/1.1");
    assert_eq!(seen.body, b"{\"temp\":91,\"device\":\"d1\"}");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("content-length"), Some("25"));
    assert_eq!(seen.header("x-verge-rule"), Some("overheat"));
    assert_eq!(seen.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(seen.header("x-site"), Some("plant 1"));
    assert_eq!(
        seen.header("host").map(str::to_owned),
        Some(server.addr.to_string())
    );
    let agent = seen.header("user-agent").expect("user-agent");
    assert_eq!(agent, format!("verge/{}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn any_2xx_is_delivered() {
    let broker = broker();
    let server = Server::start(|n| Reply::Status([200, 201, 202, 204][n % 4])).await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    for _ in 0..4 {
        deliver(&hook).await.expect("delivered");
    }
}

#[tokio::test]
async fn server_errors_and_throttling_are_transient() {
    let broker = broker();
    let server = Server::start(|n| Reply::Status([500, 503, 429, 408][n % 4])).await;
    let hook = webhook(&broker, config(&server.url("/x?secret=1"))).expect("webhook");
    for code in [500, 503, 429, 408] {
        let e = deliver(&hook).await.expect_err("failure");
        assert!(e.retry, "{code} should be retried: {e}");
        assert!(
            e.message
                .starts_with(&format!("POST http://{}/x: http {code}", server.addr)),
            "{e}"
        );
        assert!(!e.message.contains("secret"), "query not shown: {e}");
    }
    let e = deliver(&hook).await.expect_err("failure");
    assert!(
        e.message
            .ends_with("http 500 internal server error: status 500"),
        "{e}"
    );
}

#[tokio::test]
async fn client_errors_are_permanent() {
    let broker = broker();
    let server = Server::start(|n| Reply::Status([400, 404, 401, 302][n % 4])).await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    for code in [400, 404, 401, 302] {
        let e = deliver(&hook).await.expect_err("failure");
        assert!(!e.retry, "{code} should not be retried: {e}");
        assert!(e.message.contains(&format!("http {code}")), "{e}");
    }
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let broker = broker();
    // Bind then drop, so nothing listens on the port.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/x");
    let hook = webhook(&broker, config(&url)).expect("webhook");
    let e = deliver(&hook).await.expect_err("refused");
    assert!(e.retry, "{e}");
    assert_eq!(e.message, format!("POST {url}: connection refused"));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let broker = broker();
    let server = Server::start(|_| Reply::Silent).await;
    let mut c = config(&server.url("/slow"));
    c.timeout = HumanDuration(Duration::from_millis(300));
    let hook = webhook(&broker, c).expect("webhook");
    let e = deliver(&hook).await.expect_err("timeout");
    assert!(e.retry, "{e}");
    assert!(e.message.ends_with(": timed out after 300ms"), "{e}");
}

#[tokio::test]
async fn deliveries_reuse_one_connection() {
    let broker = broker();
    let mut server = Server::start(|_| Reply::Status(200)).await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    for _ in 0..3 {
        deliver(&hook).await.expect("delivered");
        server.next().await;
    }
    assert_eq!(server.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn error_answers_keep_the_connection() {
    let broker = broker();
    let server = Server::start(|n| Reply::Status(if n == 0 { 503 } else { 200 })).await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    deliver(&hook).await.expect_err("503");
    deliver(&hook).await.expect("delivered");
    assert_eq!(server.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reconnects_after_the_server_closed_the_kept_connection() {
    let broker = broker();
    let mut server = Server::start(|_| Reply::OkThenClose).await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    // Give the client time to notice the close before the next row.
    for _ in 0..2 {
        deliver(&hook).await.expect("delivered");
        server.next().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.accepts.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn back_to_back_deliveries_after_closes() {
    let broker = broker();
    let mut server = Server::start(|_| Reply::OkThenClose).await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    for _ in 0..5 {
        deliver(&hook).await.expect("delivered");
    }
    for _ in 0..5 {
        server.next().await;
    }
    // Five at least: a request that meets a connection the server has just
    // closed goes again on another.
    assert!(server.accepts.load(Ordering::SeqCst) >= 5);
}

#[tokio::test]
async fn a_kept_connection_closed_under_a_request_is_replaced() {
    let broker = broker();
    // The server closes the idle connection just as the second request
    // arrives on it (the keep-alive race): the request goes again on a new
    // connection, within the same delivery.
    let mut server = Server::start(|n| {
        if n == 1 {
            Reply::Hangup
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    deliver(&hook).await.expect("first");
    deliver(&hook).await.expect("second, after one reconnect");
    for _ in 0..3 {
        server.next().await;
    }
    assert_eq!(server.accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_new_connection_closed_without_answer_is_transient() {
    let broker = broker();
    let mut server = Server::start(|_| Reply::Hangup).await;
    let hook = webhook(&broker, config(&server.url("/"))).expect("webhook");
    let e = deliver(&hook).await.expect_err("no answer");
    assert!(e.retry, "{e}");
    assert!(
        e.message
            .ends_with(": connection closed before the response was complete"),
        "{e}"
    );
    server.next().await;
    // One attempt only: a fresh connection is not tried again here.
    assert_eq!(server.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn host_names_are_resolved() {
    let broker = broker();
    let mut server = Server::start(|_| Reply::Status(200)).await;
    let url = format!("http://localhost:{}/named", server.addr.port());
    let hook = webhook(&broker, config(&url)).expect("webhook");
    deliver(&hook).await.expect("delivered");
    let seen = server.next().await;
    assert_eq!(
        seen.header("host").map(str::to_owned),
        Some(format!("localhost:{}", server.addr.port()))
    );
}

#[tokio::test]
async fn ipv6_literals() {
    let broker = broker();
    let Ok(mut server) = Server::start_on("[::1]:0", |_| Reply::Status(200)).await else {
        eprintln!("no ipv6 loopback here; skipped");
        return;
    };
    let url = format!("http://[::1]:{}/v6", server.addr.port());
    let hook = webhook(&broker, config(&url)).expect("webhook");
    deliver(&hook).await.expect("delivered");
    let seen = server.next().await;
    assert_eq!(seen.line, "POST /v6 HTTP/1.1");
    assert_eq!(
        seen.header("host").map(str::to_owned),
        Some(format!("[::1]:{}", server.addr.port()))
    );
}

#[tokio::test]
async fn bad_settings_are_refused_at_creation() {
    let broker = broker();
    let refused = |c: WebhookConfig| match webhook(&broker, c) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };

    let e = refused(config("ftp://files.example.com/in"));
    assert!(e.contains("(webhook)"), "{e}");
    assert!(e.contains("unsupported scheme `ftp`"), "{e}");

    let e = refused(config("http:///in"));
    assert!(e.contains("has no host"), "{e}");

    let e = refused(config("localhost:8080/in"));
    assert!(e.contains("must start with http:// or https://"), "{e}");

    let mut c = config("http://127.0.0.1:8080/in");
    c.headers.insert("x bad".into(), "1".into());
    let e = refused(c);
    assert!(e.contains("invalid header name `x bad`"), "{e}");

    let mut c = config("http://127.0.0.1:8080/in");
    c.headers.insert("x-verge-rule".into(), "other".into());
    let e = refused(c);
    assert!(e.contains("cannot be configured"), "{e}");
}
