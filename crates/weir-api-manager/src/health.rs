//! Each API's health endpoint (`health` in the `WEIR_APIS` file), checked every
//! `interval` by every replica: the outcome feeds the API's circuit ([`Breaker::health`])
//! and each change of health is reported for `weir.apis` (`dev.weir.api.health_changed`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use weir_core::api::profile::HealthCheck;
use weir_core::events::api_event;
use weir_worker::manager::{Background, BackgroundContext};
use weir_worker::notice::Notices;

use crate::breaker::{Breaker, Breakers};
use crate::ApiSettings;

/// The health checks of every API the settings give one.
pub struct Health {
    settings: ApiSettings,
    breakers: Arc<Breakers>,
    notices: Notices,
}

impl Health {
    pub fn new(settings: ApiSettings, breakers: Arc<Breakers>, notices: Notices) -> Health {
        Health { settings, breakers, notices }
    }
}

/// One check: whether it passed, and what it saw.
async fn check(http: &reqwest::Client, h: &HealthCheck) -> (bool, String) {
    match http.get(&h.url).timeout(h.timeout()).send().await {
        Ok(r) if r.status().is_success() => (true, format!("{} answered {}", h.url, r.status())),
        Ok(r) => (false, format!("{} answered {}", h.url, r.status())),
        Err(e) if e.is_timeout() => (false, format!("{} did not answer within {:?}", h.url, h.timeout())),
        Err(e) => (false, format!("{}: {e}", h.url)),
    }
}

async fn watch(api: String, h: HealthCheck, breaker: Arc<Breaker>, notices: Notices, cancel: CancellationToken) {
    let http = match crate::client::http_client(Default::default(), None, weir_worker::sandbox::Guard::open()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(api = %api, error = %e, "health checks cannot start");
            return;
        }
    };
    let mut last: Option<bool> = None;
    loop {
        let (ok, what) = check(&http, &h).await;
        breaker.health(ok, &format!("health check: {what}"));
        if last != Some(ok) {
            if ok {
                tracing::info!(api = %api, "{what}: healthy");
            } else {
                tracing::warn!(api = %api, "{what}: unhealthy");
            }
            notices.push(
                api_event::HEALTH_CHANGED,
                &api,
                json!({"healthy": ok, "detail": what}),
                weir_runtime::now_ms(),
            );
            last = Some(ok);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(h.interval().max(Duration::from_secs(1))) => {}
        }
    }
}

#[async_trait::async_trait]
impl Background for Health {
    async fn run(&self, ctx: BackgroundContext) {
        let mut checks = Vec::new();
        for (api, p) in &self.settings.profiles.apis {
            let Some(h) = p.health.clone() else { continue };
            let breaker = self.breakers.get(api, self.settings.circuit_of(api));
            checks.push(tokio::spawn(watch(api.clone(), h, breaker, self.notices.clone(), ctx.cancel.clone())));
        }
        for c in checks {
            let _ = c.await;
        }
    }
}
