//! The operator's Kubernetes client, with its request rate bounded so a
//! renewal storm or a mass apply cannot flood the apiserver.

use std::time::Duration;

use http::{Request, Response};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use kube::{Client, Config};
use prometheus_client::metrics::counter::Counter;
use tower::limit::RateLimitLayer;
use tower::util::{BoxService, MapRequestLayer};
use tower::{BoxError, ServiceBuilder, ServiceExt};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::fence::{Fence, FenceLayer, FencedBody, fence_request};

/// The HTTP stack under the bound: requests in, responses with kube's body.
type Transport = BoxService<Request<Body>, Response<Box<DynBody>>, BoxError>;

/// A client for the controller that starts at most `qps` requests a second
/// (0 lifts the bound). Requests over the bound wait in order, and a write
/// is sent only if `fence` allows it when its turn comes and again when its
/// body goes on the wire. `sent` counts the requests that go out
/// (`Metrics::kube_api_requests`).
///
/// Leader election must use its own unbounded client: a lease renewal stuck
/// behind a queue of Secret writes would cost the lease.
pub fn bounded(
    mut config: Config,
    qps: u32,
    fence: Fence,
    sent: Counter,
) -> Result<Client, kube::Error> {
    // No retry of 429/503/504 below this bound and the fence (kube's default
    // stack has one): a retry would go out uncounted, past the bound,
    // unfenced after a freeze, and hide from the dispatcher the throttling
    // it holds for. `direct` has none; kube's is turned off.
    config.default_retry = false;
    let transport = match config.proxy_url {
        None => ClientBuilder::new(direct(&config, &fence)?, config.default_namespace),
        // Through a proxy, kube's own stack: writes are checked once.
        Some(_) => ClientBuilder::try_from(config)?,
    };
    // The layer added last sees a request first: the fence sits below the
    // limiter, so a write that waited for its turn is checked when it goes,
    // and only what passes both is counted.
    let count = MapRequestLayer::new(move |request| {
        sent.inc();
        request
    });
    let builder = transport.with_layer(&count).with_layer(&FenceLayer(fence));
    Ok(match qps {
        0 => builder.build(),
        qps => {
            let (n, per) = window(qps);
            builder.with_layer(&RateLimitLayer::new(n, per)).build()
        }
    })
}

/// kube's default stack (its TLS, credentials and timeouts) over a hyper
/// client whose write bodies carry the fence onto the connection. kube's
/// tracing spans are left out; the operator's metrics count requests.
fn direct(config: &Config, fence: &Fence) -> Result<Transport, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut connector =
        hyper_timeout::TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let client: HttpClient<_, FencedBody<Body>> =
        HttpClient::builder(TokioExecutor::new()).build(connector);
    let fence = fence.clone();
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_request(move |request: Request<Body>| fence_request(request, &fence))
        // One error type below kube's auth layer, whose Either needs it.
        .map_err(BoxError::from)
        .service(client)
        .map_response(|response| {
            response.map(|body| {
                Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>
            })
        });
    Ok(BoxService::new(service))
}

/// `client`, with `name=value` added to the query of every request it
/// sends: a parameter kube's `ListParams` has no field for, such as the
/// `shardSelector` of a sharded list and watch. The requests still go
/// through `client`'s bound and fence.
pub fn with_query(client: &Client, name: &str, value: &str) -> Client {
    let encode = |s| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let pair = format!("{}={}", encode(name), encode(value));
    let base = client.clone();
    let service = tower::service_fn(move |request: Request<Body>| {
        let base = base.clone();
        let request = add_query(request, &pair);
        async move { base.send(request).await }
    });
    Client::new(service, client.default_namespace())
}

fn add_query(mut request: Request<Body>, pair: &str) -> Request<Body> {
    let uri = request.uri();
    let with = match uri.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}&{pair}", uri.path()),
        _ => format!("{}?{pair}", uri.path()),
    };
    // A path and query that parsed once still parse with an encoded pair.
    if let Ok(parsed) = with.parse() {
        *request.uri_mut() = parsed;
    }
    request
}

/// tower's limiter counts in fixed windows, so a full window's worth can
/// start at the end of one and again at the start of the next. Windows of a
/// tenth of the rate keep any one second within 10% of it.
fn window(qps: u32) -> (u64, Duration) {
    let n = u64::from((qps / 10).max(1));
    (n, Duration::from_secs_f64(n as f64 / f64::from(qps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_pair_is_added_encoded_to_any_query() {
        let pair = "shardSelector=shardRange%28object%2Emetadata%2Euid%2C%20%270x0%27%29";
        for (uri, want) in [
            ("/apis/g/v1/xs", format!("/apis/g/v1/xs?{pair}")),
            ("/apis/g/v1/xs?", format!("/apis/g/v1/xs?{pair}")),
            (
                "/apis/g/v1/xs?watch=true&resourceVersion=5",
                format!("/apis/g/v1/xs?watch=true&resourceVersion=5&{pair}"),
            ),
        ] {
            let request = Request::get(uri).body(Body::empty()).expect("request");
            assert_eq!(add_query(request, pair).uri().to_string(), want);
        }
    }

    #[test]
    fn windows_keep_the_rate_and_stay_short() {
        for qps in [1, 5, 10, 25, 100, 333, 5000] {
            let (n, per) = window(qps);
            let rate = n as f64 / per.as_secs_f64();
            assert!(
                (rate - f64::from(qps)).abs() < 1e-6 * f64::from(qps),
                "{qps}: {rate}"
            );
            assert!(per <= Duration::from_secs(1), "{qps}: {per:?}");
            if qps >= 10 {
                assert!(n as f64 <= f64::from(qps) / 10.0, "{qps}: {n}");
            }
        }
    }

    /// kube's own retry is off: a 429 reaches the operator at once, as one
    /// request, for the dispatcher to hold on (and to count and bound).
    #[tokio::test]
    async fn the_apiserver_throttling_is_answered_once_not_retried_below_the_bound() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(1..) = socket.read(&mut buf).await {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"TooManyRequests","code":429}"#;
                        let reply = format!(
                            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
        let config = Config::new(url.parse().expect("url"));
        let sent = Counter::default();
        let client = bounded(config, 0, Fence::open(), sent.clone()).expect("client");
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client, "ns");
        let answer = api.get_opt("s").await;
        assert!(
            matches!(&answer, Err(kube::Error::Api(s)) if s.code == 429),
            "{answer:?}"
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(sent.get(), 1);
    }
}
