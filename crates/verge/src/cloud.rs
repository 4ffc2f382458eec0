//! `verge cloud`: bind the cloud center's ports (`verge_cloud::Listeners`),
//! open its database, print where it listens (and the admin token on the
//! first start) and serve until Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use verge_cloud::{Cloud, CloudConfig, Listeners};

use crate::node::{Signals, runtime};

/// Run the cloud center until a shutdown signal. Call outside any runtime.
pub fn run(cfg: CloudConfig, reset_admin_token: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        if reset_admin_token {
            let (cloud, _) = open(&cfg).await?;
            let token = cloud.reset_admin_token().await;
            // Stopped cleanly (its replica row goes): a `verge cloud` with
            // this data dir may start at once, not taken for a duplicate.
            cloud.close().await;
            let token = token.context("resetting the admin token")?;
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
    /// Where nodes connect (`None` in external mode: the external broker).
    pub mqtt_addr: Option<SocketAddr>,
    /// The MQTT URL nodes are told at join.
    pub mqtt_url: String,
    /// Where nodes connect over TLS, when `mqtt.tls.enabled`.
    pub mqtt_tls_addr: Option<SocketAddr>,
    /// How users reach the API (the configured public URL, else the bind
    /// address).
    pub url: String,
    listeners: Listeners,
}

/// Bind the ports and open the database.
pub async fn start(mut cfg: CloudConfig) -> anyhow::Result<Started> {
    let listeners = Listeners::bind(&cfg).await.map_err(|e| {
        let hint = match e.key {
            "mqtt.tls.bind" => "set another address with `--set mqtt.tls.bind=…`".to_owned(),
            key => format!(
                "set another address: `verge cloud --set {key}=…`, or `verge up --cloud-set {key}=…`"
            ),
        };
        anyhow::Error::new(e.error).context(format!("{} {}: cannot listen ({hint})", e.key, e.addr))
    })?;
    let (_, mqtt_addr, mqtt_tls_addr) = listeners
        .addrs()
        .context("the addresses of the cloud's listeners")?;
    listeners
        .complete(&mut cfg)
        .context("the addresses of the cloud's listeners")?;
    let url = cfg.cloud.public_url.clone();
    let mqtt_url = cfg.mqtt_url();
    let (cloud, new_admin_token) = open(&cfg).await?;
    Ok(Started {
        cloud,
        new_admin_token,
        mqtt_addr,
        mqtt_url,
        mqtt_tls_addr,
        url,
        listeners,
    })
}

/// `Cloud::open` makes the data dir (0700) and names `cloud.data_dir` when
/// it cannot.
async fn open(cfg: &CloudConfig) -> anyhow::Result<(Cloud, Option<String>)> {
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
        match self.mqtt_addr {
            Some(a) => out.push_str(&format!("  MQTT for nodes       mqtt://{a}\n")),
            None => out.push_str(&format!(
                "  MQTT for nodes       {}  (external broker, mqtt.mode = \"external\")\n",
                self.mqtt_url
            )),
        }
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
            .serve_with(
                self.listeners.http,
                self.listeners.mqtt,
                self.listeners.mqtt_tls,
                shutdown,
            )
            .await
            .context("the cloud center stopped")
    }
}
