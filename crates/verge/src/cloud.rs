//! `verge cloud`: open the cloud center's database, bind its HTTP and MQTT
//! ports (and the MQTT TLS port when `mqtt.tls.enabled`), print where it listens (and the admin token on the first start)
//! and serve until Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use verge_cloud::{Cloud, CloudConfig};

use crate::node::{Signals, runtime};

/// Run the cloud center until a shutdown signal. Call outside any runtime.
pub fn run(cfg: CloudConfig, reset_admin_token: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        if reset_admin_token {
            let (cloud, _) = open(&cfg).await?;
            let token = cloud
                .reset_admin_token()
                .await
                .context("resetting the admin token")?;
            println!("admin token: {token}");
            println!("(the old admin token no longer works; keep this one, it is not shown again)");
            return Ok(());
        }
        let signals = Signals::install()?;
        let started = start(cfg).await?;
        println!("{}", started.banner());
        println!("press Ctrl-C to stop");
        started.serve(signals.wait()).await
    })
}

/// A cloud center with its ports bound, not yet serving.
pub struct Started {
    /// The center.
    pub cloud: Cloud,
    /// The admin token when it was made by this start.
    pub new_admin_token: Option<String>,
    /// Where nodes connect.
    pub mqtt_addr: SocketAddr,
    /// Where nodes connect over TLS, when `mqtt.tls.enabled`.
    pub mqtt_tls_addr: Option<SocketAddr>,
    /// How users reach the API (the configured public URL, else the bind
    /// address).
    pub url: String,
    http: TcpListener,
    mqtt: TcpListener,
    mqtt_tls: Option<TcpListener>,
}

/// Bind the ports and open the database.
pub async fn start(cfg: CloudConfig) -> anyhow::Result<Started> {
    let http = TcpListener::bind(cfg.http.bind).await.with_context(|| {
        format!(
            "http.bind {}: cannot listen (set another address: `verge cloud --set http.bind=…`, or `verge up --cloud-set http.bind=…`)",
            cfg.http.bind
        )
    })?;
    let mqtt = TcpListener::bind(cfg.mqtt.bind).await.with_context(|| {
        format!(
            "mqtt.bind {}: cannot listen (set another address: `verge cloud --set mqtt.bind=…`, or `verge up --cloud-set mqtt.bind=…`)",
            cfg.mqtt.bind
        )
    })?;
    let mqtt_tls = if cfg.mqtt.tls.enabled {
        let addr = cfg.mqtt.tls.bind;
        Some(TcpListener::bind(addr).await.with_context(|| {
            format!(
                "mqtt.tls.bind {addr}: cannot listen (set another address with `--set mqtt.tls.bind=…`)"
            )
        })?)
    } else {
        None
    };
    let http_addr = http.local_addr().context("the HTTP listener's address")?;
    let mqtt_addr = mqtt.local_addr().context("the MQTT listener's address")?;
    let mqtt_tls_addr = match &mqtt_tls {
        Some(l) => Some(l.local_addr().context("the MQTT TLS listener's address")?),
        None => None,
    };
    let mut cfg = cfg;
    // Port 0 asks for any free port: tell nodes and users the real one.
    if cfg.cloud.public_url.is_empty() {
        cfg.cloud.public_url = format!("http://{http_addr}");
    }
    if cfg.mqtt.public_url.is_empty() {
        // Nodes are told the TLS endpoint when it is on.
        cfg.mqtt.public_url = match mqtt_tls_addr {
            Some(a) => format!("mqtts://{a}"),
            None => format!("mqtt://{mqtt_addr}"),
        };
    }
    let url = cfg.cloud.public_url.clone();
    let (cloud, new_admin_token) = open(&cfg).await?;
    Ok(Started {
        cloud,
        new_admin_token,
        mqtt_addr,
        mqtt_tls_addr,
        url,
        http,
        mqtt,
        mqtt_tls,
    })
}

async fn open(cfg: &CloudConfig) -> anyhow::Result<(Cloud, Option<String>)> {
    std::fs::create_dir_all(&cfg.cloud.data_dir).with_context(|| {
        format!(
            "cloud.data_dir: cannot create {}",
            cfg.cloud.data_dir.display()
        )
    })?;
    Cloud::open(cfg.clone())
        .await
        .context("opening the cloud center")
}

impl Started {
    /// Where everything is, and the admin token if it is new.
    pub fn banner(&self) -> String {
        let mut out = String::from("verge cloud center is running\n");
        out.push_str(&format!("  console              {}/\n", self.url));
        out.push_str(&format!(
            "  open API             {}/api  (OpenAPI: {}/api/openapi.json)\n",
            self.url, self.url
        ));
        out.push_str(&format!(
            "  MQTT for nodes       mqtt://{}\n",
            self.mqtt_addr
        ));
        if let Some(a) = self.mqtt_tls_addr {
            out.push_str(&format!("  MQTT over TLS        mqtts://{a}\n"));
        }
        match &self.new_admin_token {
            Some(t) => out.push_str(&format!(
                "admin token: {t}\n(shown once; `verge cloud --reset-admin-token` makes a new one)\n"
            )),
            None => out.push_str(
                "admin token: as printed at the first start (`verge cloud --reset-admin-token` makes a new one)\n",
            ),
        }
        out.trim_end().to_owned()
    }

    /// Serve until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.cloud
            .serve_with(self.http, self.mqtt, self.mqtt_tls, shutdown)
            .await
            .context("the cloud center stopped")
    }
}
