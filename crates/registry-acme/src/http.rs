//! The HTTP client instant-acme speaks through: reqwest with rustls (the platform's roots plus
//! any the settings add), remembering the `Retry-After` of the CA's last refusal so the upkeep
//! waits at least that long.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::{AcmeSettings, Failure};

/// When the CA last asked to be left alone until, shared with the client that heard it.
pub(crate) type RetryAfter = Arc<Mutex<Option<SystemTime>>>;

/// reqwest behind instant-acme's client trait.
pub(crate) struct Client {
    http: reqwest::Client,
    retry_after: RetryAfter,
}

impl Client {
    pub(crate) fn new(settings: &AcmeSettings) -> Result<(Client, RetryAfter), Failure> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("registry/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.directory_roots {
            let pem = std::fs::read(path).map_err(|e| {
                Failure::new(format!(
                    "cannot read the directory's roots {}: {e}",
                    path.display()
                ))
            })?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Failure::new(format!("{} holds no PEM certificates: {e}", path.display()))
            })?;
            builder = builder.tls_certs_merge(roots);
        }
        let http = builder
            .build()
            .map_err(|e| Failure::new(format!("cannot build an HTTP client: {e}")))?;
        let retry_after = Arc::new(Mutex::new(None));
        Ok((
            Client {
                http,
                retry_after: retry_after.clone(),
            },
            retry_after,
        ))
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let (http, slot) = (self.http.clone(), self.retry_after.clone());
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let rsp = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let status = rsp.status();
            if status.is_client_error() || status.is_server_error() {
                let after = rsp
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                *slot.lock().expect("not poisoned") = after;
            }
            let mut builder = http::Response::builder()
                .status(status)
                .version(rsp.version());
            for (k, v) in rsp.headers() {
                builder = builder.header(k, v);
            }
            let bytes = rsp
                .bytes()
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            let response = builder
                .body(Full::new(bytes))
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(response))
        })
    }
}

/// `Retry-After` as seconds or an HTTP date, as the moment to wait for.
fn parse_retry_after(value: &str) -> Option<SystemTime> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs.min(86400 * 7)));
    }
    httpdate::parse_http_date(value.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        let in_two = parse_retry_after("120").unwrap();
        let left = in_two.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(118) && left <= Duration::from_secs(120));
        let date = parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            httpdate::fmt_http_date(date),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
