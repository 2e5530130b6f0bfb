//! The files a browser loads from the hub: the client library
//! (`/chanhub.js`, `/chanhub.d.ts` and the `/wire.d.ts` it imports: the
//! main entry of the `chanhub` npm package in `src/web/client/`) and the dashboard (`/`). They are
//! compiled into the binary (`include_str!` of `src/web/`), so a hub serves
//! them offline and they always match its protocol. No build step: the
//! sources are the files served.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::hub::Hub;

const CHANHUB_JS: &str = include_str!("../web/client/chanhub.js");
const CHANHUB_DTS: &str = include_str!("../web/client/chanhub.d.ts");
/// The wire types `chanhub.d.ts` imports (`./wire.js`), generated from
/// `proto-docs/schemas/`.
const WIRE_DTS: &str = include_str!("../web/client/wire.d.ts");
const DASHBOARD_HTML: &str = include_str!("../web/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../web/dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("../web/dashboard/style.css");

/// The dashboard may load only its own files and talk only to its hub.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The routes for the embedded files.
pub(crate) fn routes() -> Router<Hub> {
    Router::new()
        .route("/", get(|| async { page(DASHBOARD_HTML) }))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
        .route(
            "/chanhub.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHANHUB_JS) }),
        )
        .route(
            "/chanhub.d.ts",
            get(|| async { asset("application/typescript; charset=utf-8", CHANHUB_DTS) }),
        )
        .route(
            "/wire.d.ts",
            get(|| async { asset("application/typescript; charset=utf-8", WIRE_DTS) }),
        )
}

/// A static file. `no-cache`: the browser revalidates, so a hub upgrade is
/// picked up at once. Any origin may load the client library (a page on
/// another origin imports it as a module, which needs CORS).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The dashboard page, with a strict content security policy.
fn page(body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
